"""hear_ssam: masked-spectrogram audio encoders (SSAM, SSAST, ...) as a HEAR 2021 plugin.

    model = hear_ssam.load_model()            # bundled ssam-tiny
    emb, ts = hear_ssam.get_timestamp_embeddings(audio_16k, model)
    scene = hear_ssam.get_scene_embeddings(audio_16k, model)

Layout: `frontend` (features), `ops` (numerics: the selective scan and its backends),
`modules` (blocks), `encoder` (the shared masked-spectrogram encoder), `presets`
(families as data), `checkpoint` (I/O), `runtime` + `api` (HEAR).
"""
from .api import get_scene_embeddings, get_timestamp_embeddings, load_model
from .baseline import LogMelBaseline
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .encoder import EncoderConfig, PretrainingOptions, SpectrogramEncoder, SSAMEncoder
from .frontend import FrontendConfig, LogMelFrontend
from .presets import FAMILIES, PRESETS, preset_encoder
from .runtime import HearSSAM

__version__ = "1.1.0"
__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings", "HearSSAM", "LogMelBaseline",
           "SpectrogramEncoder", "SSAMEncoder", "EncoderConfig", "PretrainingOptions", "FrontendConfig", "FAMILIES",
           "PRESETS", "preset_encoder", "LogMelFrontend", "load_checkpoint", "save_checkpoint", "CheckpointError"]
