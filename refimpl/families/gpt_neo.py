"""GPT-Neo as a family: its config parser (``refimpl.config``) and its audited conversion (``refimpl.weights``)."""

from __future__ import annotations

from ..config import config_from_dict
from ..weights import IGNORED_BUFFER, convert_checkpoint
from .base import Family

GPT_NEO = Family(name="gpt_neo", title="GPT-Neo", config_from_dict=config_from_dict, convert=convert_checkpoint,
                 ignored_buffer=IGNORED_BUFFER)
