"""A stand-in of the WebUI host modules that llmcond touches, in two flavours.

``a1111``: AUTOMATIC1111 stable-diffusion-webui v1.10.1. Mirrors, in reduced form:
  ``modules/prompt_parser.py``: ``SdConditioning``, ``get_learned_conditioning_prompt_schedules`` (prompt editing
  ``[a:b:N]``, ``[a:N]``, ``[a::N]`` and alternation ``[a|b]``, without nesting), ``get_learned_conditioning``
  (one model call per unique prompt with all its schedule variants, dict conds split per variant),
  ``get_multicond_prompt_list`` / ``get_multicond_learned_conditioning`` (``AND`` with ``:weight``);
  ``modules/processing.py``: ``StableDiffusionProcessing`` (class-level persistent ``cached_c``/``cached_uc``,
  ``setup_prompts`` with styles, ``cached_params``, ``get_conds_with_caching`` inside ``devices.autocast()``,
  ``setup_conds``), txt2img hires (``calculate_hr_conds`` with the hires prompt and size and the
  ``[cached_hr_uc, cached_uc]`` lookup), img2img, ``process_images`` (per-iteration prompts of a batch, extra
  networks removed from the texts, ``state.interrupted`` checked between iterations, scripts' ``process`` /
  ``postprocess_batch`` / ``postprocess``, errors of ``process`` reported and swallowed like the script runner);
  ``modules/sd_models_xl.py``: ``get_learned_conditioning`` of the sgm ``DiffusionEngine`` (size from the batch,
  crop from ``opts.sdxl_crop_top/left``, zeroed empty negative) with a fake CLIP; ``modules/scripts.py``
  (``Script``, ``AlwaysVisible``, script args slices), ``modules/script_callbacks.py``, ``modules/shared.py``
  (``opts``, ``state``, ``cmd_opts``), ``modules/sd_models.py`` (``model_data.sd_model``), ``modules/devices.py``
  (``autocast``), ``modules/paths.py`` (``models_path``).
``forge2``: lllyasviel/stable-diffusion-webui-forge main (2024-25): ``backend/diffusion_engine/sdxl.py``
  ``StableDiffusionXL.get_learned_conditioning`` under ``torch.inference_mode`` (crop always 0), 3-slot caches,
  ``cached_params`` with the distilled-CFG field, no uncond computed at CFG scale 1, ``devices.autocast`` a no-op,
  and a ``backend`` package (which A1111 lacks).
``forge1``: Forge1 (lllyasviel's forge before 2.0) and Panchovix/stable-diffusion-webui-reForge main: A1111's
  processing and sgm ``DiffusionEngine`` (``modules/sd_models_xl.py``: crop from the options, 2-slot caches) with
  ``devices.autocast`` a no-op, ``sd_model.forge_objects`` and Forge1's ``ldm_patched`` memory management
  (``hosts.detect_host`` finds ``ldm_patched``).
VRAM: ``webui_standin/memory.py`` mirrors each flavour's memory manager (Forge2 ``backend.memory_management``,
  Forge1 ``ldm_patched.modules.model_management``, A1111 ``modules.lowvram``) over ``Host.card`` (a fake card
  from ``vram_fakes``); ``Host.sample`` loads the UNet as sampling does.
Both: ``modules/extra_networks.py`` and the built-in Lora extension's ``networks`` module (how each host exposes
the active LoRAs): see the section "extra networks + Lora" below.

Issue 17 additions (sections marked "issue 17"): ``modules/api/api.py`` (``api_app``: ``init_script_args`` and
``api_middleware``'s exception-to-status mapping); ``modules/ui_toprow.py`` + ``javascript/token-counters.js``
(``toprow``, ``update_token_counter``, ``token_counters.js``: the prompt boxes' own token counters);
``modules/shared_state.py`` (``State.textinfo``, ``State.stopping_generation``); ``modules/ui_components.py`` +
``javascript/inputAccordion.js`` (``ui_components_module``, ``input_accordion.js``: the header box, gradio 3.41).

The fake CLIP gives a deterministic [77, 2048] crossattn and a 1280 pooled per text, so "the host's own conds"
are known exactly. Not copied: written from the public code's behaviour.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import types
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

MODULES = (
    "modules",
    "modules.shared",
    "modules.prompt_parser",
    "modules.processing",
    "modules.scripts",
    "modules.script_callbacks",
    "modules.sd_models",
    "modules.devices",
    "modules.paths",
    "backend",
    "backend.diffusion_engine",
    "backend.memory_management",
    "modules.lowvram",
    "ldm_patched",
    "ldm_patched.modules",
    "ldm_patched.modules.model_management",
)


# ---------------------------------------------------------------------------------------------- prompt_parser
class SdConditioning(list):
    """A list of prompts with the size and polarity of the image they are for."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


_EDIT = re.compile(r"\[([^\[\]:|]*):([^\[\]:|]*)(?::([^\[\]:|]*))?\]")
_ALT = re.compile(r"\[([^\[\]:]*\|[^\[\]:]*)\]")


def _when(text: str, steps: int) -> int:
    v = float(text)
    return int(v * steps) if v < 1 else int(v)


def _schedule(prompt: str, steps: int) -> list[list]:
    """End step of each variant of one prompt (reduced grammar: no nesting)."""
    points = set()
    for m in _EDIT.finditer(prompt):
        when = m.group(3) if m.group(3) is not None else m.group(2)
        with contextlib.suppress(ValueError):
            points.add(_when(when.strip(), steps))
    alternating = bool(_ALT.search(prompt))
    ends = (
        sorted({p for p in points if 0 < p < steps} | {steps})
        if not alternating
        else list(range(1, steps + 1))
    )

    def at(step: int) -> str:
        def edit(m: re.Match) -> str:
            if m.group(3) is None:  # [a:N] add after / [a::N] remove after
                a, when = m.group(1), m.group(2)
                return a if step > _when(when.strip(), steps) else ""
            a, b, when = m.group(1), m.group(2), m.group(3)
            return b if step > _when(when.strip(), steps) else a

        text = _EDIT.sub(edit, prompt)
        return _ALT.sub(lambda m: m.group(1).split("|")[(step - 1) % len(m.group(1).split("|"))], text)

    res, prev = [], None
    for end in ends:
        text = at(end)
        if res and text == prev:
            res[-1][0] = end
        else:
            res.append([end, text])
        prev = text
    return res


def get_learned_conditioning_prompt_schedules(
    prompts, base_steps, hires_steps=None, use_old_scheduling=False
):
    steps = hires_steps if hires_steps is not None and not use_old_scheduling else base_steps
    return [_schedule(p, steps) for p in prompts]


@dataclass
class ScheduledPromptConditioning:
    end_at_step: int
    cond: Any


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res = []
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    cache: dict = {}
    for prompt, schedule in zip(prompts, schedules):
        if prompt in cache:
            res.append(cache[prompt])
            continue
        texts = SdConditioning([x[1] for x in schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)
        out = []
        for i, (end_at_step, _) in enumerate(schedule):
            cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
            out.append(ScheduledPromptConditioning(end_at_step, cond))
        cache[prompt] = out
        res.append(out)
    return res


_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^(\s*.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def get_multicond_prompt_list(prompts):
    res_indexes, flat, index_of = [], [], {}
    for prompt in prompts:
        indexes = []
        for sub in _AND.split(prompt):
            m = _WEIGHT.search(sub)
            text, weight = m.groups() if m else (sub, 1.0)
            weight = float(weight) if weight is not None else 1.0
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            indexes.append((index_of[text], weight))
        res_indexes.append(indexes)
    return res_indexes, flat, index_of


@dataclass
class ComposableScheduledPromptConditioning:
    schedules: list
    weight: float = 1.0


@dataclass
class MulticondLearnedConditioning:
    shape: tuple
    batch: list


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(
        model, SdConditioning(flat, copy_from=prompts), steps, hires_steps, use_old_scheduling
    )
    batch = [[ComposableScheduledPromptConditioning(learned[i], w) for i, w in idx] for idx in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


# ---------------------------------------------------------------------------------------------- fake CLIP models
def text_seed(*parts: object) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8"))


def fake_clip(text: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(text_seed("clip", text))
    return torch.randn(77, 2048, generator=g), torch.randn(1280, generator=g)


def size_part(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).repeat_interleave(256)


class Embedder(torch.nn.Module):
    def __init__(self, key: str):
        super().__init__()
        self.input_key = key


def _load_clip(model) -> None:
    """What the Forge flavours' own cond path does first: load the text encoders through the memory manager."""
    objects = getattr(model, "forge_objects", None)
    if objects is not None:
        objects.vram.load_models_gpu([objects.clip.patcher])


class FakeSgmSDXL(torch.nn.Module):
    """A1111's sgm DiffusionEngine as far as conds go (``sd_models_xl.get_learned_conditioning``)."""

    is_sdxl = True

    def __init__(self, shared, refiner: bool = False):
        super().__init__()
        self.shared = shared
        keys = ["original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"]
        keys = (["txt", "aesthetic_score"] if refiner else ["txt", "txt"]) + keys
        self.conditioner = torch.nn.Module()
        self.conditioner.embedders = torch.nn.ModuleList(Embedder(k) for k in keys)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[SdConditioning | list] = []

    def get_learned_conditioning(self, batch):
        self.calls.append(batch)
        _load_clip(self)  # Forge1/reForge sd_models_xl: move_clip_to_gpu()
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        negative = getattr(batch, "is_negative_prompt", False)
        top, left = self.shared.opts.sdxl_crop_top, self.shared.opts.sdxl_crop_left
        crossattn, pooled = zip(*(fake_clip(t) for t in batch))
        crossattn, pooled = torch.stack(crossattn), torch.stack(pooled)
        if negative and all(x == "" for x in batch):
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
        sizes = size_part([height, width, top, left, height, width]).expand(len(batch), -1)
        return {"crossattn": crossattn, "vector": torch.cat([pooled, sizes], dim=1)}


class FakeSD15(FakeSgmSDXL):
    is_sdxl = False

    def get_learned_conditioning(self, batch):
        self.calls.append(batch)
        return torch.stack([fake_clip(t)[0][:, :768] for t in batch])


class StableDiffusionXL(torch.nn.Module):
    """Forge2's ``backend.diffusion_engine.sdxl.StableDiffusionXL`` as far as conds go."""

    is_sdxl = True

    def __init__(self, shared):
        super().__init__()
        self.shared = shared
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list = []

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt):
        self.calls.append(prompt)
        _load_clip(self)  # Forge2: memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        width = getattr(prompt, "width", 1024) or 1024
        height = getattr(prompt, "height", 1024) or 1024
        negative = getattr(prompt, "is_negative_prompt", False)
        crossattn, pooled = zip(*(fake_clip(t) for t in prompt))
        crossattn, pooled = torch.stack(crossattn), torch.stack(pooled)
        if negative and all(x == "" for x in prompt):
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
        flat = size_part([height, width, 0, 0, height, width]).expand(len(prompt), -1)
        return dict(crossattn=crossattn, vector=torch.cat([pooled, flat], dim=1))

    def set_clip_skip(self, clip_skip):
        pass


# ---------------------------------------------------------------------------------------------- scripts
class Script:
    filename = "llmcond.py"
    args_from = 0
    args_to = 0
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return []

    def process(self, p, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass


AlwaysVisible = object()


class ScriptRunner:
    """The always-on part of ``scripts.ScriptRunner``: each script gets its slice of ``p.script_args``."""

    def __init__(self, scripts_list: list, errors: list):
        self.alwayson_scripts = scripts_list
        self.errors = errors

    def _each(self, name: str, p, *extra, **kw):
        for s in self.alwayson_scripts:
            try:
                getattr(s, name)(p, *extra, *p.script_args[s.args_from : s.args_to], **kw)
            except Exception as e:  # the host reports and goes on
                self.errors.append((name, e))

    def process(self, p):
        self._each("process", p)

    def postprocess_batch(self, p, images, batch_number):
        self._each("postprocess_batch", p, images, batch_number=batch_number)

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)


# ---------------------------------------------------------------------------------------------- processing
class State:
    def __init__(self):
        self.interrupted = False
        self.skipped = False


class Options:
    def __init__(self, **values):
        self.__dict__.update(values)


@dataclass
class Sampled:
    """What the fake sampler saw for one batch: the conds objects and the texts per image."""

    c: Any
    uc: Any
    prompts: list
    negative_prompts: list
    width: int
    height: int
    hr_c: Any = None
    hr_uc: Any = None


class StableDiffusionProcessing:
    cached_uc: ClassVar[list] = [None, None]
    cached_c: ClassVar[list] = [None, None]

    def __init__(
        self,
        host,
        prompt="",
        negative_prompt="",
        width=1024,
        height=1024,
        steps=20,
        batch_size=1,
        n_iter=1,
        styles=(),
        cfg_scale=7.0,
        script_args=(),
        scripts=None,
        **extra,
    ):
        self.host = host
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.width, self.height, self.steps = width, height, steps
        self.batch_size, self.n_iter, self.styles, self.cfg_scale = (
            batch_size,
            n_iter,
            list(styles),
            cfg_scale,
        )
        self.script_args = list(script_args)
        self.scripts = scripts
        self.extra_generation_params: dict = {}
        self.distilled_cfg_scale = extra.pop("distilled_cfg_scale", 3.5)
        self.__dict__.update(extra)
        if not host.shared.opts.persistent_cond_cache:
            self.cached_c, self.cached_uc = [None] * len(self.cached_c), [None] * len(self.cached_uc)
        self.sampled: list[Sampled] = []
        self.extra_network_data: list = []

    def setup_prompts(self):
        styles = self.host.styles
        all_p = (
            self.prompt if isinstance(self.prompt, list) else self.batch_size * self.n_iter * [self.prompt]
        )
        all_n = (
            self.negative_prompt
            if isinstance(self.negative_prompt, list)
            else [self.negative_prompt] * len(all_p)
        )
        self.all_prompts = [", ".join([x, *(styles[s][0] for s in self.styles)]) for x in all_p]
        self.all_negative_prompts = [
            ", ".join([x, *(styles[s][1] for s in self.styles)]) if self.styles else x for x in all_n
        ]

    def cached_params(
        self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False
    ):
        opts = self.host.shared.opts
        key = (
            required_prompts,
            steps,
            hires_steps,
            use_old_scheduling,
            opts.CLIP_stop_at_last_layers,
            self.host.sd_model_name,
            extra_network_data,
            opts.sdxl_crop_left,
            opts.sdxl_crop_top,
            self.width,
            self.height,
            opts.emphasis,
        )
        if self.host.flavour == "forge2":
            key = (*key, self.distilled_cfg_scale)
        return key

    def get_conds_with_caching(
        self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None
    ):
        opts = self.host.shared.opts
        params = self.cached_params(
            required_prompts, steps, extra_network_data, hires_steps, opts.use_old_scheduling
        )
        for cache in caches:
            if cache[0] is not None and params == cache[0]:
                return cache[1]
        cache = caches[0]
        with self.host.devices.autocast():
            cache[1] = function(
                self.host.shared.sd_model, required_prompts, steps, hires_steps, opts.use_old_scheduling
            )
        cache[0] = params
        return cache[1]

    def setup_conds(self):
        pp = self.host.prompt_parser
        prompts = pp.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative = pp.SdConditioning(
            self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True
        )
        skip_uncond = self.host.flavour == "forge2" and self.cfg_scale == 1
        self.uc = (
            None
            if skip_uncond
            else self.get_conds_with_caching(
                pp.get_learned_conditioning, negative, self.steps, [self.cached_uc], self.extra_network_data
            )
        )
        self.c = self.get_conds_with_caching(
            pp.get_multicond_learned_conditioning,
            prompts,
            self.steps,
            [self.cached_c],
            self.extra_network_data,
        )

    def hires(self):
        pass


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_uc: ClassVar[list] = [None, None]
    cached_hr_c: ClassVar[list] = [None, None]

    def __init__(self, host, enable_hr=False, hr_scale=2.0, hr_prompt="", hr_negative_prompt="", **kw):
        super().__init__(host, **kw)
        self.enable_hr, self.hr_scale = enable_hr, hr_scale
        self.hr_prompt, self.hr_negative_prompt = hr_prompt, hr_negative_prompt

    def setup_prompts(self):
        super().setup_prompts()
        self.all_hr_prompts = [self.hr_prompt or p for p in self.all_prompts]
        self.all_hr_negative_prompts = [self.hr_negative_prompt or p for p in self.all_negative_prompts]

    def calculate_hr_conds(self):
        pp = self.host.prompt_parser
        w, h = int(self.width * self.hr_scale), int(self.height * self.hr_scale)
        hr_prompts = pp.SdConditioning(self.hr_prompts, width=w, height=h)
        hr_negative = pp.SdConditioning(self.hr_negative_prompts, width=w, height=h, is_negative_prompt=True)
        self.hr_uc = self.get_conds_with_caching(
            pp.get_learned_conditioning,
            hr_negative,
            self.steps,
            [self.cached_hr_uc, self.cached_uc],
            self.hr_extra_network_data,
        )
        self.hr_c = self.get_conds_with_caching(
            pp.get_multicond_learned_conditioning,
            hr_prompts,
            self.steps,
            [self.cached_hr_c, self.cached_c],
            self.hr_extra_network_data,
        )

    def hires(self):
        if self.enable_hr:
            activate_extra_networks(self, self.hr_extra_network_data)
            self.calculate_hr_conds()
            self.sampled[-1].hr_c, self.sampled[-1].hr_uc = self.hr_c, self.hr_uc


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, host, init_images=(), inpaint_full_res=False, inpaint_size=(512, 512), **kw):
        super().__init__(host, **kw)
        self.init_images = list(init_images)
        if inpaint_full_res:  # "only masked": conds for the crop's size
            self.width, self.height = inpaint_size


@dataclass
class Processed:
    images: list
    infotexts: list
    extra_generation_params: dict


def create_infotext(p, index: int) -> str:
    params = {"Steps": p.steps, "Size": f"{p.width}x{p.height}", **p.extra_generation_params}

    def quote(v):
        text = str(v)
        return text if not any(c in text for c in ',:"\n') else '"' + text.replace('"', '\\"') + '"'

    return (
        p.all_prompts[index]
        + "\nNegative prompt: "
        + p.all_negative_prompts[index]
        + "\n"
        + ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    )


def process_images(p) -> Processed:
    host = p.host
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    for n in range(p.n_iter):
        if host.shared.state.interrupted:
            break
        sl = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[sl], p.all_negative_prompts[sl]
        if hasattr(p, "all_hr_prompts"):
            p.hr_prompts, p.hr_negative_prompts = p.all_hr_prompts[sl], p.all_hr_negative_prompts[sl]
            p.hr_prompts, p.hr_extra_network_data = parse_prompts(p.hr_prompts)
        p.prompts, p.extra_network_data = parse_prompts(p.prompts)
        activate_extra_networks(p, p.extra_network_data)
        p.setup_conds()
        host.sample()
        p.sampled.append(Sampled(p.c, p.uc, list(p.prompts), list(p.negative_prompts), p.width, p.height))
        p.hires()
        if p.scripts is not None:
            p.scripts.postprocess_batch(p, [], batch_number=n)
        for i in range(len(p.prompts)):
            images.append(f"image {n}.{i}")
            infotexts.append(create_infotext(p, n * p.batch_size + i))
    processed = Processed(images, infotexts, dict(p.extra_generation_params))
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed


# ============================================================================================ extra networks + Lora
# (issue 21; a section of its own) Mirrors, in reduced form, on both flavours:
#  - ``modules/extra_networks.py``: ``ExtraNetworkParams`` (``items``; ``positional``; ``named`` from ``k=v``;
#    equal when the items are), ``parse_prompt`` (``<name:a:b...>`` removed, args split on ``:``),
#    ``parse_prompts`` (the batch gets the FIRST prompt's data), ``activate`` (each registered network or alias
#    with its params, every other registered network with ``[]``).
#  - The built-in Lora extension (A1111 ``extensions-builtin/Lora``, Forge2 ``extensions-builtin/sd_forge_lora``):
#    its ``networks`` module, left in ``sys.modules`` under that top-level name by the host's script loader, with
#    ``available_networks`` / ``available_network_aliases`` / ``forbidden_network_aliases`` (a name among the
#    forbidden aliases is looked up in ``available_networks``, others among the aliases), ``loaded_networks``,
#    ``list_available_networks()`` (scans ``cmd_opts.lora_dir`` for .safetensors/.pt/.ckpt; name = file stem)
#    and ``load_networks(names, te, unet, dyn)`` (unknown names rescan, then are skipped). A1111's loaded
#    networks carry ``te_multiplier``/``unet_multiplier``/``dyn_dim``; Forge2's do not (it hands the
#    multipliers to its patcher as ``strength_clip``/``strength_model``). ``extra_networks_lora.ExtraNetworkLora``
#    (registered as ``lora``, alias ``lyco``) reads ``te = positional[1]`` (default 1) overridden by ``te=``,
#    ``unet = positional[2]`` (default te) overridden by ``unet=``, ``dyn`` likewise.
#  - processing: prompts parsed per batch (``parse_extra_network_prompts``), ``extra_networks.activate`` before
#    ``setup_conds``, ``cached_params`` keyed by the ``extra_network_data`` dict itself; txt2img hires: the hires
#    prompts parsed into ``hr_extra_network_data``, activated before the hires conds, which get that data.
#  The UNet half of a LoRA is not simulated: the fake models ignore it.
LORA_MODULES = ("modules.extra_networks", "networks")
MODULES += LORA_MODULES


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional, self.named = [], {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return self.items == other.items


_RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt(prompt: str):
    res: dict = defaultdict(list)

    def found(m: re.Match) -> str:
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return _RE_EXTRA_NET.sub(found, prompt), res


def parse_prompts(prompts):
    res, extra_data = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed
        res.append(updated)
    return res, extra_data


@dataclass
class NetworkOnDisk:
    name: str
    filename: str

    @property
    def alias(self) -> str:
        return self.name


class Network:
    def __init__(self, name: str, network_on_disk: NetworkOnDisk):
        self.name, self.network_on_disk = name, network_on_disk


def _networks_module(host) -> types.ModuleType:
    m = types.ModuleType("networks")
    m.available_networks, m.available_network_aliases, m.forbidden_network_aliases = {}, {}, {}
    m.loaded_networks = []

    def list_available_networks():
        m.available_networks.clear()
        m.available_network_aliases.clear()
        m.forbidden_network_aliases.clear()
        m.forbidden_network_aliases.update({"none": 1, "addams": 1})
        folder = host.shared.cmd_opts.lora_dir
        for f in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
            if os.path.splitext(f)[1].lower() not in (".safetensors", ".pt", ".ckpt"):
                continue
            entry = NetworkOnDisk(os.path.splitext(os.path.basename(f))[0], f)
            m.available_networks[entry.name] = entry
            if entry.alias in m.available_network_aliases:
                m.forbidden_network_aliases[entry.alias.lower()] = 1
            m.available_network_aliases[entry.name] = entry
            m.available_network_aliases[entry.alias] = entry

    def lookup(name):
        if name.lower() in m.forbidden_network_aliases:
            return m.available_networks.get(name)
        return m.available_network_aliases.get(name)

    def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
        m.loaded_networks.clear()
        if any(lookup(n) is None for n in names):
            list_available_networks()
        for i, name in enumerate(names):
            entry = lookup(name)
            if entry is None:
                host.missing_networks.append(name)
                continue
            net = Network(name, entry)
            if host.flavour != "forge2":
                net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
                net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
                net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
            m.loaded_networks.append(net)

    m.list_available_networks, m.load_networks = list_available_networks, load_networks
    list_available_networks()
    return m


class ExtraNetworkLora:
    def __init__(self, networks: types.ModuleType):
        self.name, self.networks = "lora", networks

    def activate(self, p, params_list):
        names, te, unet, dyn = [], [], [], []
        for params in params_list:
            names.append(params.positional[0])
            t = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            t = float(params.named.get("te", t))
            u = float(params.positional[2]) if len(params.positional) > 2 else t
            u = float(params.named.get("unet", u))
            d = int(params.positional[3]) if len(params.positional) > 3 else None
            d = int(params.named["dyn"]) if "dyn" in params.named else d
            te.append(t)
            unet.append(u)
            dyn.append(d)
        self.networks.load_networks(names, te, unet, dyn)


def _extra_networks_module(host) -> types.ModuleType:
    m = types.ModuleType("modules.extra_networks")
    m.extra_network_registry, m.extra_network_aliases = {}, {}
    m.ExtraNetworkParams, m.parse_prompt, m.parse_prompts = ExtraNetworkParams, parse_prompt, parse_prompts

    def activate(p, extra_network_data):
        activated = []
        for name, args in (extra_network_data or {}).items():
            net = m.extra_network_registry.get(name) or m.extra_network_aliases.get(name)
            if net is None:
                continue
            try:
                net.activate(p, args)
            except Exception as e:  # the host reports and goes on
                host.script_errors.append(("extra network", e))
            activated.append(net)
        for net in m.extra_network_registry.values():
            if net not in activated:
                net.activate(p, [])

    m.activate = activate
    return m


def build_extra_networks(host) -> None:
    """The host's extra-networks module, and the Lora extension as the script loader leaves it."""
    host.shared.cmd_opts.lora_dir = os.path.join(host.models_path, "Lora")
    host.missing_networks = []
    extra = host.modules["modules.extra_networks"] = _extra_networks_module(host)
    networks = host.modules["networks"] = _networks_module(host)
    lora = networks.extra_network_lora = ExtraNetworkLora(networks)  # as the extension's before_ui does
    extra.extra_network_registry["lora"] = lora
    if host.flavour != "forge2":  # A1111 and reForge register the alias; Forge2's sd_forge_lora does not
        extra.extra_network_aliases["lyco"] = lora


def remove_lora_extension(host) -> None:
    """A host started without its Lora extension (``--disable-extra-extensions`` or removed)."""
    host.modules.pop("networks", None)
    sys.modules.pop("networks", None)
    registry = host.modules["modules.extra_networks"]
    registry.extra_network_registry.pop("lora", None)
    registry.extra_network_aliases.pop("lyco", None)


def activate_extra_networks(p, extra_network_data) -> None:
    p.host.modules["modules.extra_networks"].activate(p, extra_network_data)


# ---------------------------------------------------------------------------------------------- the host
@dataclass
class Callbacks:
    model_loaded: list = field(default_factory=list)
    script_unloaded: list = field(default_factory=list)
    ui_settings: list = field(default_factory=list)
    app_started: list = field(default_factory=list)


class Host:
    """Registers the stand-in modules in ``sys.modules`` (``install``) and drives them like the WebUI does."""

    def __init__(self, flavour: str, models_path: str):
        assert flavour in ("a1111", "forge1", "forge2")
        self.flavour = flavour
        self.card: Any = None  # vram_fakes.FakeCard: where the host's models take VRAM (None: no accounting)
        self.unet_bytes, self.vae_bytes = 5 << 30, 160 << 20
        self.models_path = models_path
        self.styles = {"cinematic": ("cinematic lighting", "blurry")}
        self.sd_model_name = "sdxl_base"
        self.callbacks = Callbacks()
        self.manual_cast = True  # A1111 on MPS/XPU/old GPUs; False: torch.autocast (thread-local) as on CUDA
        self.script_errors: list = []
        self.modules: dict[str, types.ModuleType] = {}
        self._build()

    def _module(self, name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        self.modules[name] = m
        return m

    def _build(self) -> None:
        opts = Options(
            emphasis="Original",
            sdxl_crop_top=0,
            sdxl_crop_left=0,
            CLIP_stop_at_last_layers=1,
            use_old_scheduling=False,
            persistent_cond_cache=True,
        )
        self.shared = self._module(
            "modules.shared", opts=opts, state=State(), cmd_opts=Options(), sd_model=None
        )
        self.prompt_parser = self._module(
            "modules.prompt_parser",
            **{
                k: globals()[k]
                for k in (
                    "SdConditioning",
                    "get_learned_conditioning",
                    "get_multicond_learned_conditioning",
                    "get_learned_conditioning_prompt_schedules",
                    "get_multicond_prompt_list",
                )
            },
        )
        autocast = contextlib.nullcontext if self.flavour != "a1111" else self._a1111_autocast
        self.devices = self._module(
            "modules.devices", autocast=autocast, device=torch.device("cpu"), torch_gc=lambda: None
        )
        slots = 3 if self.flavour == "forge2" else 2  # Forge2 keeps extra generation params in a 3rd slot

        def cache() -> list:
            return [None] * slots

        base = type(
            "StableDiffusionProcessing",
            (StableDiffusionProcessing,),
            {"cached_uc": cache(), "cached_c": cache()},
        )
        t2i = type(
            "StableDiffusionProcessingTxt2Img",
            (StableDiffusionProcessingTxt2Img, base),
            {"cached_hr_uc": cache(), "cached_hr_c": cache()},
        )
        i2i = type("StableDiffusionProcessingImg2Img", (StableDiffusionProcessingImg2Img, base), {})
        self.processing = self._module(
            "modules.processing",
            StableDiffusionProcessing=base,
            StableDiffusionProcessingTxt2Img=t2i,
            StableDiffusionProcessingImg2Img=i2i,
            process_images=process_images,
        )
        self.scripts = self._module("modules.scripts", Script=Script, AlwaysVisible=AlwaysVisible)
        cb = self.callbacks
        self.script_callbacks = self._module(
            "modules.script_callbacks",
            on_model_loaded=cb.model_loaded.append,
            on_script_unloaded=cb.script_unloaded.append,
            on_ui_settings=cb.ui_settings.append,
            on_app_started=cb.app_started.append,
        )
        self.model_data = Options(sd_model=None)
        self._module("modules.sd_models", model_data=self.model_data)
        self._module("modules.paths", models_path=self.models_path)
        self._module("modules", __path__=[])
        self._build_memory()

    def _build_memory(self) -> None:
        from webui_standin import memory

        self.lowvram = self.vram = None
        if self.flavour == "forge2":
            self._module("backend", __path__=[])
            self._module("backend.diffusion_engine", __path__=[])
            self.vram = memory.ForgeMemory(self, memory.FORGE2_INFERENCE)
            self.modules["backend.memory_management"] = self.vram.build("backend.memory_management")
        elif self.flavour == "forge1":
            self._module("ldm_patched", __path__=[])
            self._module("ldm_patched.modules", __path__=[])
            self.vram = memory.ForgeMemory(self, memory.FORGE1_INFERENCE)
            name = "ldm_patched.modules.model_management"
            self.modules[name] = self.vram.build(name)
        else:
            self.lowvram = memory.A1111LowVram(self)
            self.modules["modules.lowvram"] = self.lowvram.build()

        build_extra_networks(self)

    def attach_card(self, card: Any) -> None:
        """Account the host's models on ``card``: A1111 keeps its model on the card unless in a low-VRAM mode;
        Forge loads its models when sampling."""
        self.card = card
        if self.vram is not None:
            self.vram.current_loaded_models.clear()  # loaded before the card was watched
            self.vram.loads.clear()
        model = self.shared.sd_model
        if self.flavour == "a1111" and not self.lowvram.is_needed(model):
            card.others.update(unet=self.unet_bytes, vae=self.vae_bytes)
        elif self.flavour == "a1111":
            model.lowvram = True

    def sample(self) -> None:
        """What sampling does to VRAM: Forge loads the UNet through its manager, A1111's low-VRAM hook moves it in."""
        model = self.shared.sd_model
        if self.vram is not None and hasattr(model, "forge_objects"):
            self.vram.load_models_gpu([model.forge_objects.unet])
        elif self.lowvram is not None and getattr(model, "lowvram", False):
            self.lowvram.send_me_to_gpu("unet", self.unet_bytes)

    def _a1111_autocast(self):
        return _manual_cast() if self.manual_cast else torch.autocast("cpu", dtype=torch.bfloat16)

    def install(self) -> Host:
        for name in MODULES:
            sys.modules.pop(name, None)
        for name, m in self.modules.items():
            m.__spec__ = types.SimpleNamespace(
                name=name,
                submodule_search_locations=getattr(m, "__path__", None),
                loader=None,
                parent=name.rpartition(".")[0],
            )
            sys.modules[name] = m
        return self

    def uninstall(self) -> None:
        for name in MODULES:
            sys.modules.pop(name, None)

    # -- model loading, like sd_models.load_model + script_callbacks.model_loaded_callback ------------------
    def load_model(self, kind: str = "sdxl") -> Any:
        if self.flavour == "forge2":
            model = StableDiffusionXL(self.shared)
        else:
            model = {
                "sdxl": lambda: FakeSgmSDXL(self.shared),
                "refiner": lambda: FakeSgmSDXL(self.shared, True),
                "sd15": lambda: FakeSD15(self.shared),
            }[kind]()
        if self.flavour != "a1111":
            from webui_standin.memory import ForgeObjects

            model.forge_objects = ForgeObjects(self.unet_bytes, self.vae_bytes, self.vram)
        self.sd_model_name = kind
        self.shared.sd_model = model
        self.model_data.sd_model = model
        model.get_learned_conditioning([""])  # the model-load call with a plain list
        for fn in self.callbacks.model_loaded:
            fn(model)
        return model

    def unload_scripts(self) -> None:
        for fn in self.callbacks.script_unloaded:
            fn()
        self.callbacks.script_unloaded.clear()
        self.callbacks.model_loaded.clear()

    # -- a generation with always-on scripts ------------------------------------------------------------------
    def txt2img(self, scripts_and_args: list[tuple[Any, list]] = (), **kw):
        return self._run(self.processing.StableDiffusionProcessingTxt2Img, scripts_and_args, **kw)

    def img2img(self, scripts_and_args: list[tuple[Any, list]] = (), **kw):
        return self._run(self.processing.StableDiffusionProcessingImg2Img, scripts_and_args, **kw)

    def _run(self, cls, scripts_and_args, **kw):
        scripts_list, args = [], []
        for script, script_args in scripts_and_args:
            script.args_from, script.args_to = len(args), len(args) + len(script_args)
            scripts_list.append(script)
            args.extend(script_args)
        p = cls(self, script_args=args, scripts=ScriptRunner(scripts_list, self.script_errors), **kw)
        return p, self.processing.process_images(p)


@contextlib.contextmanager
def _manual_cast():
    """A1111's ``devices.autocast()`` on a GPU without autocast support: ``manual_cast`` patches forwards."""
    patched = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding)

    def cast_forward(self, *args, **kwargs):
        raise AssertionError("manual_cast forward ran inside llmcond's encode")

    for cls in patched:
        if not hasattr(cls, "org_forward"):
            cls.org_forward = cls.forward
            cls.forward = cast_forward
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    finally:
        for cls in patched:
            if "org_forward" in cls.__dict__:
                cls.forward = cls.org_forward
                del cls.org_forward


# ---------------------------------------------------------------------------------------------- issue 17: state
# ``modules/shared_state.py`` ``State``: the progress text under the preview and "Stop generating" (finish the
# current image, then stop; ``interrupted`` is the Interrupt button).
State.textinfo = None
State.stopping_generation = False


# ---------------------------------------------------------------------------------------------- issue 17: the API
# ``modules/api/api.py`` of A1111 1.10.1 (Forge has the same code), reduced to txt2img with always-on scripts:
# ``init_script_args`` (the UI's default args, then ``min(slots, len(args))`` request values over them; an unknown
# script answers 422) and ``api_middleware``'s ``handle_exception`` (an exception escaping ``process_images``
# becomes ``JSONResponse(status_code=vars(e).get("status_code", 500))`` with ``detail`` from ``vars(e)``; all but
# ``HTTPException`` are reported with their traceback as "API error").
def api_app(host: Host, scripts_and_defaults: list[tuple[Any, str, list]]) -> Any:
    """A FastAPI app with ``POST /sdapi/v1/txt2img``; ``scripts_and_defaults``: (script, title, UI default args)."""
    import logging

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    app = FastAPI()
    api_log = logging.getLogger("standin.api")

    def handle_exception(request: Request, e: Exception) -> JSONResponse:
        err = {
            "error": type(e).__name__,
            "detail": vars(e).get("detail", ""),
            "body": vars(e).get("body", ""),
            "errors": str(e),
        }
        if not isinstance(e, HTTPException):
            api_log.error("API error: %s: %s %s", request.method, request.url, err, exc_info=True)
        return JSONResponse(status_code=vars(e).get("status_code", 500), content=jsonable_encoder(err))

    @app.middleware("http")
    async def exception_handling(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request: Request, e: Exception):
        return handle_exception(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException):
        return handle_exception(request, e)

    @app.post("/sdapi/v1/txt2img")
    def text2imgapi(body: dict) -> dict:
        pairs = []
        for script, title, defaults in scripts_and_defaults:
            args = list(defaults)
            sent = (body.get("alwayson_scripts") or {}).get(title.lower(), {})
            for i in range(min(len(args), len(sent.get("args", [])))):
                args[i] = sent["args"][i]
            pairs.append((script, args))
        unknown = set(body.get("alwayson_scripts") or {}) - {t.lower() for _, t, _ in scripts_and_defaults}
        if unknown:
            raise HTTPException(status_code=422, detail=f"always on script {unknown.pop()} not found")
        gen = {k: body[k] for k in ("prompt", "negative_prompt", "n_iter", "batch_size") if k in body}
        _, processed = host.txt2img(pairs, **gen)
        return {"images": processed.images, "info": processed.infotexts[0]}

    return app


# ---------------------------------------------------------------------------------------------- issue 17: toprow
# The prompt boxes' token counters of A1111 1.10.1 ``modules/ui_toprow.py`` (Forge: the same): an HTML counter
# ``<tab>_token_counter`` / ``<tab>_negative_token_counter`` (class ``token-counter``, created invisible) and a
# hidden button ``<tab>_token_button`` / ``<tab>_negative_token_button`` whose click runs ``ui.update_token_counter``
# into the counter. Its CLIP count is stood in by words per 75-token chunk; ``token_counters.js`` (beside this file)
# mirrors ``javascript/token-counters.js``. ``TOKEN_COUNTER_CSS``: the host's style.css rules for them.
TOKEN_COUNTER_CSS = """
.block.token-counter { position: absolute; display: inline-block; right: 1em; min-width: 0 !important;
  width: auto; z-index: 100; top: -0.75em; }
.block.token-counter-visible { display: block !important; }
.block.token-counter span { border: 2px solid rgba(192,192,192,0.4) !important; border-radius: 0.4em;
  padding: 0.1em 0.75em; }
.block.token-counter div { display: inline; }
"""


def update_token_counter(text: str) -> str:
    """``modules/ui.py`` ``update_token_counter``: ``<span ...>count/limit</span>``, limit in chunks of 75."""
    n = len(text.split())
    return f"<span class='gr-box gr-text-input'>{n}/{max(1, -(-n // 75)) * 75}</span>"


def toprow(tab: str) -> dict:
    """The prompt boxes with their counters and hidden buttons, as ``Toprow.create_prompts`` lays them out."""
    import gradio as gr

    out = {}
    for part, box_id, counter_id in (
        ("prompt", f"{tab}_prompt", f"{tab}_token_counter"),
        ("negative", f"{tab}_neg_prompt", f"{tab}_negative_token_counter"),
    ):
        box = gr.Textbox("", label=part, elem_id=box_id, lines=3)
        counter = gr.HTML(
            "<span>0/75</span>", elem_id=counter_id, elem_classes=["token-counter"], visible=False
        )
        button_id = f"{tab}_token_button" if part == "prompt" else f"{tab}_negative_token_button"
        button = gr.Button(visible=False, elem_id=button_id)
        button.click(fn=update_token_counter, inputs=[box], outputs=[counter])
        out[part] = box
    return out


# ---------------------------------------------------------------------------------------------- issue 17: accordion
# ``modules/ui_components.py`` ``InputAccordion`` of A1111 1.10.1 (gradio 3.41; Forge's ``InputAccordionImpl`` on
# gradio 4 is not reproduced: gradio 4.40 leaves invisible components out of the page): a hidden checkbox
# ``<id>-checkbox`` whose value is the script arg, and an accordion ``<id>`` (class ``input-accordion``) that
# ``input_accordion.js`` (beside this file; the host's inputAccordion.js) gives a visible header checkbox
# ``<id>-visible-checkbox``. Install it as ``modules.ui_components`` with ``ui_components_module()``.
def ui_components_module() -> types.ModuleType:
    import gradio as gr

    assert int(gr.__version__.split(".")[0]) < 4, "gradio 4 leaves the hidden checkbox out of the page"

    class InputAccordion(gr.Checkbox):
        def __init__(self, value, **kwargs):
            self.accordion_id = kwargs.get("elem_id")
            super().__init__(
                value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False}
            )
            code = 'function(checked){ inputAccordionChecked("' + self.accordion_id + '", checked); }'
            self.change(fn=None, inputs=[self], _js=code)
            self.accordion = gr.Accordion(
                **{**kwargs, "elem_id": self.accordion_id, "elem_classes": ["input-accordion"], "open": value}
            )

        def __enter__(self):
            self.accordion.__enter__()
            return self

        def __exit__(self, exc_type, exc_val, exc_tb):
            self.accordion.__exit__(exc_type, exc_val, exc_tb)

        def get_block_name(self):
            return "checkbox"

    m = types.ModuleType("modules.ui_components")
    m.InputAccordion = InputAccordion
    return m
