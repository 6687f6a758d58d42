"""Configuration of the 1-D ResNet ECG encoder (the ResNet18-1D of MERL, used as ETP's ECG tower).

Imports torch-free transformers / huggingface_hub only, so it can travel as Hub remote code.
"""


from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .leads import STANDARD_LEADS
from .registry import RemoteCodeConfigMixin

# Blocks per stage of the standard ResNet depths (He et al. 2016), as MERL's resnet1d defines them.
RESNET_DEPTHS: dict[str, tuple[list[int], str]] = {
    "resnet18": ([2, 2, 2, 2], "basic"),
    "resnet34": ([3, 4, 6, 3], "basic"),
    "resnet50": ([3, 4, 6, 3], "bottleneck"),
    "resnet101": ([3, 4, 23, 3], "bottleneck"),
}


@strict
class EcgResNetConfig(RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of [`EcgResNetModel`]: a 1-D ResNet over multi-lead ECG.

    The defaults give MERL's ResNet18-1D (the ETP ECG encoder): a stem ``Conv1d(num_leads -> 64,
    kernel 7, stride 2, padding 3)`` + BatchNorm + ReLU with **no max-pool**, then four stages of two
    basic blocks with 64 / 128 / 256 / 512 channels and first-block strides 1 / 2 / 2 / 2. A 10-s
    record at 500 Hz (5000 samples) becomes a ``(512, 313)`` feature map (one frame every 16 samples,
    i.e. 32 ms). About 3.85 M parameters.

    Args:
        num_leads: number of input leads (input channels).
        lead_names: the leads in the order the model expects them; ``len(lead_names) == num_leads``.
            The feature extractor puts its output in this order.
        sampling_rate: expected sampling rate of the input in Hz (documentation of the contract; the
            feature extractor does the resampling).
        num_samples: expected input length in samples (``num_samples / sampling_rate`` seconds).
        embedding_size: channels of the stem convolution.
        stem_kernel_size: kernel of the stem convolution, in samples.
        stem_stride: stride of the stem convolution, in samples.
        hidden_sizes: output channels of each stage (before the bottleneck expansion).
        depths: number of residual blocks in each stage.
        layer_type: ``"basic"`` (two 3-tap convolutions) or ``"bottleneck"`` (1-3-1 with 4x expansion).
        downsample_in_first_stage: whether the first stage strides by 2 (MERL: no).
        classifier_dropout: dropout before the classification head of
            [`EcgResNetForSequenceClassification`].
        initializer_range: std of the normal init for linear layers.
    """

    model_type = "ecg_resnet"

    num_leads: int = 12
    lead_names: list[str] | tuple[str, ...] | None = None
    sampling_rate: int = 500
    num_samples: int = 5000
    embedding_size: int = 64
    stem_kernel_size: int = 7
    stem_stride: int = 2
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    layer_type: Literal["basic", "bottleneck"] = "basic"
    downsample_in_first_stage: bool = False
    classifier_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.lead_names is None:
            # isinstance guard: type errors are reported by @strict after __post_init__, not here.
            if isinstance(self.num_leads, int) and 0 < self.num_leads <= len(STANDARD_LEADS):
                self.lead_names = list(STANDARD_LEADS[: self.num_leads])
        if self.lead_names is not None:
            self.lead_names = list(self.lead_names)
        self.hidden_sizes = list(self.hidden_sizes)
        self.depths = list(self.depths)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: shapes that must agree."""
        if self.lead_names is not None and len(self.lead_names) != self.num_leads:
            raise ValueError(
                f"EcgResNetConfig: lead_names has {len(self.lead_names)} entries but num_leads={self.num_leads}"
            )
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"EcgResNetConfig: hidden_sizes ({self.hidden_sizes}) and depths ({self.depths}) "
                "must have one entry per stage"
            )
        if any(d < 1 for d in self.depths) or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"EcgResNetConfig: depths and hidden_sizes must be >= 1, got {self.depths}")
        if self.num_leads < 1:
            raise ValueError(f"EcgResNetConfig: num_leads must be >= 1, got {self.num_leads}")

    @property
    def expansion(self) -> int:
        """Channel expansion of the last convolution of a block (1 basic, 4 bottleneck)."""
        return 4 if self.layer_type == "bottleneck" else 1

    @property
    def hidden_size(self) -> int:
        """Channels of the last feature map (= size of ``pooler_output``)."""
        return self.hidden_sizes[-1] * self.expansion

    @property
    def total_stride(self) -> int:
        """Input samples per output frame (16 for the defaults)."""
        stride = self.stem_stride
        for i in range(len(self.depths)):
            if i > 0 or self.downsample_in_first_stage:
                stride *= 2
        return stride

    @classmethod
    def from_depth(cls, name: str, **kwargs) -> "EcgResNetConfig":
        """Standard variants by name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``."""
        if name not in RESNET_DEPTHS:
            raise ValueError(f"Unknown ResNet variant {name!r}; expected one of {sorted(RESNET_DEPTHS)}")
        depths, layer_type = RESNET_DEPTHS[name]
        return cls(depths=depths, layer_type=layer_type, **kwargs)


__all__ = ["EcgResNetConfig"]
