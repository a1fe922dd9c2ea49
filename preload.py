"""Command-line flags for llmcond's model folders (read back from ``modules.shared.cmd_opts``)."""


def preload(parser):
    parser.add_argument(
        "--llmcond-llm-dir",
        type=str,
        action="append",
        default=None,
        help="llmcond: an extra folder with LLMs (HF directories or .gguf); may be given several times",
    )
    parser.add_argument(
        "--llmcond-adapter-dir",
        type=str,
        action="append",
        default=None,
        help="llmcond: an extra folder with adapters (.safetensors); may be given several times",
    )
