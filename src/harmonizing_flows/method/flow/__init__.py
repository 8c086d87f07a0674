"""The normalizing flow of Harmonizing Flows: layers, dequantization, the model and its guided objective."""

from __future__ import annotations

from harmonizing_flows.method.flow.model import Flow
from harmonizing_flows.method.flow.objective import guided_loss

__all__ = ["Flow", "guided_loss"]
