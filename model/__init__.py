"""HyperKD models and training in torch: Prithvi teacher, student MAE, masking, losses, trainer.

Nothing here imports prefect (a test enforces it).
"""
