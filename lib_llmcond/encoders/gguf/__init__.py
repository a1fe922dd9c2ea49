"""GGUF files: reader, table-driven dequantization, quantized linear/embedding modules, loader."""
