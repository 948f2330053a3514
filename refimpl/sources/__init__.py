"""Reading files and sources: the safetensors reader, the shard index, bundled models, local folders and the hub."""
