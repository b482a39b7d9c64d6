"""mhpo-vl: RL post-training with MHPO for vision-language and text models."""
__version__ = "0.1.0"
