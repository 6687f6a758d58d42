"""1-D ResNet ECG encoder (MERL's ResNet18-1D, the ECG tower of ETP) as a ``transformers`` model.

Module names follow MERL's ``resnet1d.py`` (``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,
bn2,shortcut.0,shortcut.1}``) so a converted MERL encoder state dict loads without renaming.

Imports torch and transformers only (Hub remote-code bundle).
"""


from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutput

from .configuration_ecg_resnet import EcgResNetConfig
from .heads import SequenceClassificationHeadMixin


@dataclass
class EcgResNetModelOutput(ModelOutput):
    """Output of [`EcgResNetModel`].

    Args:
        last_hidden_state: ``(batch, hidden_size, num_frames)`` feature map of the last stage
            (channels first, as a 1-D CNN produces it; one frame every ``config.total_stride`` samples).
        pooler_output: ``(batch, hidden_size)`` mean of the last feature map over valid frames.
        frame_mask: ``(batch, num_frames)`` 1 for frames computed from real (not padded) samples.
        hidden_states: stem output and every stage output, each ``(batch, channels, frames)``,
            when ``output_hidden_states=True``.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    frame_mask: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@torch.no_grad()
def init_relu_conv_(module: nn.Module) -> None:
    """He init (fan-out) of a ``Conv1d`` feeding a ReLU, zero bias, as torchvision's ResNet; other
    modules are left alone."""
    if isinstance(module, nn.Conv1d):
        init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            init.zeros_(module.bias)


class EcgResNetBasicBlock(nn.Module):
    """Two 3-tap convolutions with BatchNorm and an identity or 1x1-conv shortcut (expansion 1)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.shortcut = _make_shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(hidden)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(hidden))


class EcgResNetBottleneckBlock(nn.Module):
    """1-3-1 bottleneck block with 4x channel expansion (ResNet50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.conv3 = nn.Conv1d(channels, channels * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm1d(channels * self.expansion)
        self.shortcut = _make_shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(hidden)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(hidden))


def _make_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    # An empty Sequential is the identity; MERL's checkpoints key the projection as shortcut.0 / shortcut.1.
    if stride == 1 and in_channels == out_channels:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm1d(out_channels),
    )


class EcgResNetPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight init, and the input contract shared by the ResNet heads."""

    config: EcgResNetConfig
    base_model_prefix = "ecg_encoder"
    main_input_name = "input_values"
    input_modalities = ("time",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["EcgResNetBasicBlock", "EcgResNetBottleneckBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        init_relu_conv_(module)


class EcgResNetModel(EcgResNetPreTrainedModel):
    """1-D ResNet over ``(batch, leads, samples)`` ECG; returns the last feature map and its masked mean.

    Example:
        >>> config = EcgResNetConfig()  # ResNet18-1D, 12 leads, 500 Hz x 5000 samples
        >>> model = EcgResNetModel(config)
        >>> out = model(torch.randn(2, 12, 5000))
        >>> out.last_hidden_state.shape, out.pooler_output.shape
        (torch.Size([2, 512, 313]), torch.Size([2, 512]))
    """

    def __init__(self, config: EcgResNetConfig):
        super().__init__(config)
        self.conv1 = nn.Conv1d(
            config.num_leads,
            config.embedding_size,
            kernel_size=config.stem_kernel_size,
            stride=config.stem_stride,
            padding=config.stem_kernel_size // 2,
            bias=False,
        )
        self.bn1 = nn.BatchNorm1d(config.embedding_size)
        block_cls = EcgResNetBottleneckBlock if config.layer_type == "bottleneck" else EcgResNetBasicBlock
        in_channels = config.embedding_size
        self.stage_names: list[str] = []
        for stage_index, (channels, depth) in enumerate(zip(config.hidden_sizes, config.depths)):
            first_stride = 2 if (stage_index > 0 or config.downsample_in_first_stage) else 1
            blocks = []
            for block_index in range(depth):
                blocks.append(block_cls(in_channels, channels, first_stride if block_index == 0 else 1))
                in_channels = channels * block_cls.expansion
            name = f"layer{stage_index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        self.post_init()

    def _validate_inputs(self, input_values: torch.Tensor) -> None:
        if input_values.ndim != 3 or input_values.shape[1] != self.config.num_leads:
            raise ValueError(
                "EcgResNetModel: input_values must be shaped (batch, leads, samples) with "
                f"leads={self.config.num_leads}, got {tuple(input_values.shape)}"
            )

    def frame_mask(self, attention_mask: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
        """Downsample a per-sample mask ``(batch, samples)`` to the output frames ``(batch, num_frames)``.

        Every strided convolution here has an odd kernel with ``padding = kernel // 2`` and stride 2,
        so output frame ``i`` is centred on input sample ``stride * i``: a frame is valid when the
        sample it is centred on is valid.
        """
        if attention_mask is None:
            return None
        frames = attention_mask[:, :: self.config.total_stride][:, :num_frames]
        return frames.to(torch.long)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EcgResNetModelOutput | tuple:
        r"""
        Args:
            input_values: ``(batch, num_leads, num_samples)`` float ECG in the order of
                ``config.lead_names`` (scaled as the feature extractor does, e.g. min-max [0, 1]).
            attention_mask: ``(batch, num_samples)`` 1 for real samples, 0 for padding. Padded
                samples are zeroed and their frames left out of the pooled mean.
            lead_mask: ``(batch, num_leads)`` 1 for recorded leads, 0 for missing (zero-filled) ones.
            output_hidden_states: also return the stem and every stage output.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._validate_inputs(input_values)
        # Zero padding and missing leads so the output does not depend on the fill value.
        if lead_mask is not None:
            input_values = input_values * lead_mask[:, :, None].to(input_values.dtype)
        if attention_mask is not None:
            input_values = input_values * attention_mask[:, None, :].to(input_values.dtype)

        hidden = F.relu(self.bn1(self.conv1(input_values)))
        all_hidden = (hidden,) if output_hidden_states else None
        for name in self.stage_names:
            hidden = getattr(self, name)(hidden)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)

        frame_mask = self.frame_mask(attention_mask, hidden.shape[-1])
        if frame_mask is None:
            pooled = hidden.mean(dim=-1)
        else:
            weights = frame_mask[:, None, :].to(hidden.dtype)
            pooled = (hidden * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)

        if not return_dict:
            return tuple(v for v in (hidden, pooled, frame_mask, all_hidden) if v is not None)
        return EcgResNetModelOutput(
            last_hidden_state=hidden, pooler_output=pooled, frame_mask=frame_mask, hidden_states=all_hidden
        )


class EcgResNetForSequenceClassification(SequenceClassificationHeadMixin, EcgResNetPreTrainedModel):
    """[`EcgResNetModel`] + dropout + ``Linear(hidden_size -> num_labels)`` on the pooled features.

    The loss follows ``config.problem_type`` through ``self.loss_function``: float multi-hot labels
    give BCE-with-logits (multi-label ECG statements), integer labels cross-entropy. With
    ``freeze_base_model()`` it is the MERL/ETP linear probe (head on the 512-d pooled stage-4 map).
    """

    def __init__(self, config: EcgResNetConfig):
        super().__init__(config)
        self.ecg_encoder = EcgResNetModel(config)
        self.init_classification_head(config.hidden_size, config.classifier_dropout)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        Args:
            input_values / attention_mask / lead_mask: as [`EcgResNetModel.forward`].
            labels: ``(batch, num_labels)`` float multi-hot, or ``(batch,)`` class indices.

        Returns:
            ``SequenceClassifierOutput`` with ``logits`` ``(batch, num_labels)`` and ``loss`` when
            ``labels`` is given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ecg_encoder(
            input_values,
            attention_mask=attention_mask,
            lead_mask=lead_mask,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits, loss = self.classify(outputs.pooler_output, labels)
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = [
    "EcgResNetForSequenceClassification",
    "EcgResNetModel",
    "EcgResNetModelOutput",
    "EcgResNetPreTrainedModel",
]
