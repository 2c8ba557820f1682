"""learn: local training on one shard. Models (DNN/CNN/LSTM), the trainer, UA/WA metrics,
model files, the centralized baseline, and the pools that run training jobs. Imports `data`.
"""
