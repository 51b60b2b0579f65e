"""hear_ssam: Audio Mamba (SSAM) as a HEAR 2021 plugin.

    model = hear_ssam.load_model()            # bundled ssam-tiny
    emb, ts = hear_ssam.get_timestamp_embeddings(audio_16k, model)
    scene = hear_ssam.get_scene_embeddings(audio_16k, model)
"""
from .api import get_scene_embeddings, get_timestamp_embeddings, load_model
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .encoder import PRESETS, EncoderConfig, SSAMEncoder
from .frontend import LogMelFrontend
from .runtime import HearSSAM

__version__ = "0.1.0"
__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings", "HearSSAM",
           "SSAMEncoder", "EncoderConfig", "PRESETS", "LogMelFrontend", "load_checkpoint",
           "save_checkpoint", "CheckpointError"]
