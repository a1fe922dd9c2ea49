"""The reference's transformers path as one process, for the whole-process row: import, load the LLM, run one
prompt through its chain (template -> transformers forward -> skip -> adapter) and write the result.

python -m benchmarks.reference_encode --family gemma3|t5gemma --llm DIR --adapter FILE --prompt TEXT --out FILE

The counterpart of ``python -m lib_llmcond encode`` (same files, same prompt); ``benchmarks.run`` times both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--family", "--llm", "--adapter", "--prompt", "--out"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(argv)
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT / "tests"))
    from ref_oracle import RefAdapter

    from benchmarks.worker import padded_to_512
    from lib_llmcond.text.paths import text_path
    from lib_llmcond.text.tokenizer import load_tokenizer

    llm = Path(args.llm)
    if args.family == "t5gemma":
        model = transformers.T5GemmaEncoderModel.from_pretrained(
            llm, is_encoder_decoder=False, dtype=torch.bfloat16
        )
    else:
        model = transformers.Gemma3ForCausalLM.from_pretrained(llm, dtype=torch.bfloat16)
    model.eval()
    adapter = RefAdapter(load_file(args.adapter))
    row = text_path(args.family).tokenize(args.prompt, load_tokenizer(llm))
    ids = torch.tensor([row.ids])
    with torch.no_grad():
        if args.family == "t5gemma":
            full, mask = padded_to_512(ids[:, :512])
            out = adapter(model(input_ids=full, attention_mask=mask).last_hidden_state.float(), mask)
        else:
            hidden = model(ids, output_hidden_states=True).hidden_states[-1][:, row.adapter_start :]
            out = adapter(hidden.float())
    crossattn, pooled = out
    save_file({"crossattn": crossattn.contiguous(), "pooled": pooled.contiguous()}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
