import pytest

from refimpl import ConfigError, config_from_dict
from refimpl.families.gpt_neo import expand_attention_types
from verification.references.fixtures import gpt_neo_config


def test_attention_types_expand_per_layer():
    assert expand_attention_types([[["global", "local"], 3]]) == ("global", "local") * 3
    assert expand_attention_types([[["local"], 2], [["global"], 1]]) == ("local", "local", "global")


def test_released_125m_shape():
    raw = gpt_neo_config(vocab=50257, d_model=768, n_layers=12, n_heads=12, window=256, n_ctx=2048)
    raw["attention_types"] = [[["global", "local"], 6]]
    cfg = config_from_dict(raw)
    assert (cfg.d_head, cfg.d_mlp, cfg.window(0), cfg.window(1)) == (64, 3072, None, 256)
    assert cfg.attention_kinds[:4] == ("global", "local", "global", "local")


def test_intermediate_size_given():
    assert config_from_dict(gpt_neo_config(d_mlp=40)).d_mlp == 40


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2"}, "model_type is 'gpt2'"),
        ({"activation_function": "relu"}, "activation_function 'relu' is not supported"),
        ({"attention_types": [[["global", "sparse"], 1]]}, "unknown kinds ['sparse']"),
        ({"attention_types": [[["global"], 3]]}, "expand to 3 layers but num_layers is 2"),
        ({"hidden_size": 15}, "not divisible by num_heads"),
        ({"num_layers": 0}, "must be a positive integer"),
        ({"attention_types": "global"}, "attention_types must look like"),
    ],
)
def test_bad_configs_are_named(change, message):
    raw = gpt_neo_config()
    raw.update(change)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        config_from_dict(raw)


def test_missing_field_is_named():
    raw = gpt_neo_config()
    del raw["vocab_size"]
    with pytest.raises(ConfigError, match="'vocab_size'"):
        config_from_dict(raw)
