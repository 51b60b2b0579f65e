"""nn.Modules: the blocks an encoder stacks, with the field's parameter names.

The block contract (every entry of BLOCKS):
- `Block(dim, norm_eps=..., **options)`; unknown options raise TypeError;
- `forward(hidden, residual) -> (hidden, residual)`, [B, L, D] each, the stream being
  hidden + residual (residual None = 0), so mamba_ssm's add-norm blocks and pre-norm
  residual blocks share one loop;
- `causal`: whether output token k depends only on input tokens <= k;
- `supports_drop_path`: whether `Block(..., drop_path=p)` is accepted: stochastic depth placed
  as Vim's add-norm Block does, on the incoming hidden (the previous block's mixer output)
  before it is added to the residual; the encoder gives block i the rate of mixer i - 1 and
  drops the last mixer's output itself (`PretrainingOptions.drop_path_rate`);
- `init_encoder(encoder, depth)`: the family's model-wide init, run once after construction.
"""
from .bimamba import BiMamba, BiMambaBlock
from .drop_path import DropPath, drop_path
from .mamba import Mamba, MambaBlock
from .mlstm import mLSTMBlock
from .vit import ViTBlock

BLOCKS = {"mamba": MambaBlock, "vit": ViTBlock, "mlstm": mLSTMBlock, "bimamba": BiMambaBlock}

__all__ = ["BLOCKS", "Mamba", "MambaBlock", "BiMamba", "BiMambaBlock", "ViTBlock", "mLSTMBlock",
           "DropPath", "drop_path"]
