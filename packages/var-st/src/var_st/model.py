"""Two-Stage VAR-ST: a multi-scale gene VQ-VAE (stage 1) and a next-scale VAR transformer (stage 2).

Read top to bottom, module by module (as VAR splits quantiser / VQ-VAE / transformer):

    var_st/config.py        VQVAEConfig, VARConfig, PRESETS (the seed's sizes are the defaults)
    var_st/vqvae.py         MultiScaleResidualQuantizer, MultiScaleGeneVQVAE, codebook_stats
    var_st/transformer.py   KVCache, ScaleCausalSelfAttention, AdaLNBlock, GeneVARTransformer, sample_tokens
    var_st/model.py         TwoStageVARST (the two stages together: the API of the user's guide) and
                            CHECKPOINT_KEYMAP (names in checkpoints written by Lightning wrappers)

Every name above is importable from `var_st.model`, as before the split.

Shapes for the defaults (G = 200 genes): scales 1 (global), 8 (pathway), 32 (module), G
(individual) -> L = 241 tokens per spot, one shared codebook of 4096 x 128.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ftcore.errors import UserError
from ftcore.mapping import KeyMap, Rename

# re-exported: `from var_st.model import X` keeps working for every name that lived here
from var_st.config import PRESETS, VARConfig, VQVAEConfig, _as_config
from var_st.config import _b as _b
from var_st.transformer import AdaLNBlock as AdaLNBlock
from var_st.transformer import GeneVARTransformer, KVCache, sample_tokens
from var_st.transformer import ScaleCausalSelfAttention as ScaleCausalSelfAttention
from var_st.vqvae import MultiScaleGeneVQVAE, codebook_stats
from var_st.vqvae import MultiScaleResidualQuantizer as MultiScaleResidualQuantizer
from var_st.vqvae import _coexpression_order as _coexpression_order


class TwoStageVARST(nn.Module):
    """The user's-guide API.

        model = TwoStageVARST(num_genes=200, vqvae_config={...}, var_config={...}, current_stage=1)
        model.set_training_stage(2, stage1_ckpt_path="stage1.ckpt")
        out = model.inference(histology_features, spatial_coords, temperature=1.0, top_k=50, top_p=0.9)
        out["predicted_gene_expression"]  # [B, G]

    Configs may be dicts (unknown keys are errors naming the key) or VQVAEConfig / VARConfig.
    A var_config dict without vocab_size takes the stage-1 vocabulary.
    """

    def __init__(self, num_genes: int = 200, vqvae_config: Mapping | VQVAEConfig | None = None,
                 var_config: Mapping | VARConfig | None = None, current_stage: int = 1):
        super().__init__()
        vq = _as_config(VQVAEConfig, vqvae_config, "vqvae_config")
        if isinstance(var_config, Mapping) and "vocab_size" not in var_config:
            var_config = {**var_config, "vocab_size": vq.vocab_size}
        var = _as_config(VARConfig, var_config, "var_config")
        if var.vocab_size != vq.vocab_size:
            raise UserError(f"var_config.vocab_size {var.vocab_size} differs from vqvae_config.vocab_size {vq.vocab_size}; they must match")
        self.num_genes = int(num_genes)
        self.vqvae_config, self.var_config = vq, var
        self.vqvae = MultiScaleGeneVQVAE(self.num_genes, vq)
        self.var = GeneVARTransformer(var, vq.embed_dim, self.vqvae.scale_sizes)
        self.gene_names: list[str] | None = None  # set by training from the data; saved with checkpoints
        # where the trained VQ-VAE came from (a checkpoint, or stage-1 training in this process);
        # None = untrained codebook, and stage-2 training refuses it (the guide's first FAQ)
        self.stage1_source: str | None = None
        self.current_stage = 0
        self.set_training_stage(current_stage)

    @property
    def scale_sizes(self) -> tuple[int, ...]:
        return self.vqvae.scale_sizes

    # -- stages ---------------------------------------------------------------------------------
    def set_training_stage(self, stage: int, stage1_ckpt_path: str | Path | None = None, trust_pickle: bool = False,
                           *, checkpoint: Mapping | None = None) -> None:
        """Stage 1 trains the VQ-VAE; stage 2 freezes it (loaded from stage1_ckpt_path) and trains the VAR.
        `checkpoint`: the file's content when the caller has read it already (it is not read again)."""
        if stage not in (1, 2):
            raise UserError(f"training stage must be 1 or 2, got {stage}")
        if stage1_ckpt_path is not None:
            self.load_stage1(stage1_ckpt_path, trust_pickle=trust_pickle, checkpoint=checkpoint)
        self.current_stage = stage
        self.vqvae.requires_grad_(stage == 1)
        self.var.requires_grad_(stage == 2)
        if stage == 2:
            self.vqvae.eval()

    def load_stage1(self, path: str | Path, trust_pickle: bool = False, *, checkpoint=None) -> None:
        """The VQ-VAE weights of a stage-1 checkpoint (`checkpoint`: the file already read, a ModelFile or its
        content: then it is not read again)."""
        mf = read_stage_file(path, (STAGE1_KIND, COMPLETE_KIND), trust_pickle, what="a var-st stage-1 checkpoint",
                             hint="pass the best_vqvae.ckpt written by stage-1 training", checkpoint=checkpoint)
        config = mf.config
        if int(config["num_genes"]) != self.num_genes:
            raise UserError(f"{path} was trained on {config['num_genes']} genes but this model has {self.num_genes}; "
                            "build the model with stage 1's number of genes (or use from_stage1)")
        if dict(config["vqvae_config"]) != _plain(asdict(self.vqvae_config)):
            raise UserError(f"{path} has vqvae_config {config['vqvae_config']} which differs from this model's; "
                            "build the model with the stage-1 config (or use from_stage1)")
        sd = {k[len("vqvae."):] if k.startswith("vqvae.") else k: v for k, v in mf.state.items()
              if not k.startswith("var.")}
        _load_strict(self.vqvae, sd, path)
        self.gene_names = list(mf.data_keys.get("gene_names") or []) or self.gene_names
        self.stage1_source = str(path)

    @classmethod
    def from_stage1(cls, path: str | Path, var_config: Mapping | VARConfig | None = None, trust_pickle: bool = False,
                    *, checkpoint=None):
        """A stage-2-ready model whose VQ-VAE (config and weights) comes from a stage-1 checkpoint; the file is
        read once (`checkpoint`: the file already read, by the caller: then not at all)."""
        mf = read_stage_file(path, (STAGE1_KIND, COMPLETE_KIND), trust_pickle, what="a var-st stage-1 checkpoint",
                             hint="pass the best_vqvae.ckpt written by stage-1 training", checkpoint=checkpoint)
        model = cls(int(mf.config["num_genes"]), dict(mf.config["vqvae_config"]), var_config, current_stage=1)
        model.set_training_stage(2, stage1_ckpt_path=path, trust_pickle=trust_pickle, checkpoint=mf)
        return model

    # -- training forward (stage 2) --------------------------------------------------------------
    def forward(self, histology: torch.Tensor, coords: torch.Tensor, tokens: torch.Tensor,
                expected_decoding: bool = False):
        """Stage-2 teacher forcing: histology [B, F], coords [B, 2], stage-1 tokens [B, L] -> logits [B, L, V].

        expected_decoding=True also returns the expected-code decoding (what predict writes by default),
        rolled out scale by scale with gradients through every scale's code probabilities, as
        standardised expression in the VQ-VAE's gene order [B, G]: (logits, prediction)."""
        next_inputs = self.vqvae.quantizer.teacher_forcing_inputs(self.vqvae.split_scales(tokens))
        logits = self.var(histology, coords, next_inputs)
        if not expected_decoding:
            return logits
        f_hat, _ = self._generate(self.var.condition(histology, coords), expected=True)
        return logits, self.vqvae._decode_std(f_hat)

    def _generate(self, cond: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None,
                  expected: bool = False):
        """Condition [B, C] -> (f_hat [B, G, D], tokens [B, L]): scale by scale with the KV cache. Expected
        decoding keeps gradients through each scale's code probabilities (the next scale's input, like
        teacher forcing's, is a constant)."""
        q = self.vqvae.quantizer
        caches = [KVCache() for _ in self.var.blocks]
        f_hat, inputs, tokens = None, None, []
        for k in range(len(self.scale_sizes)):
            logits = self.var.step(cond, inputs, k, caches)
            if expected:
                probs = (logits.float() / temperature).softmax(-1)
                idx, h = probs.argmax(-1), q.contribution(probs @ q.codebook, k)
            else:
                idx = sample_tokens(logits, temperature, top_k, top_p, greedy, generator)
                h = q.embed_scale(idx, k)
            tokens.append(idx)
            f_hat = h if f_hat is None else f_hat + h
            if k + 1 < len(self.scale_sizes):
                inputs = q.next_scale_input(f_hat, k + 1)
        return f_hat, torch.cat(tokens, 1)

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def inference(self, histology_features: torch.Tensor, spatial_coords: torch.Tensor, temperature: float = 1.0,
                  top_k: int | None = 50, top_p: float | None = 0.9, greedy: bool = False,
                  seed: int | None = None, generator: torch.Generator | None = None,
                  expected: bool = False) -> dict[str, Any]:
        """Generate tokens scale by scale with the KV cache, decode with the frozen VQ-VAE.

        histology_features [B, F], spatial_coords [B, 2] -> {"predicted_gene_expression": [B, G],
        "tokens": [B, L]}. Sampling (temperature / top_k / top_p) is reproducible with `seed` or a
        `generator`; greedy=True takes the argmax token. expected=True feeds each scale the
        probability-weighted mean of the code vectors (softmax(logits / temperature)) instead of one
        token: every scale's contribution is affine in its code vectors, so this is that scale's
        expected contribution given the coarser ones - a better point prediction of expression
        than any single draw (tokens then report the argmax).
        """
        if greedy and expected:
            raise UserError("choose one decoding: greedy=True or expected=True, not both")
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        histology_features = histology_features.to(dev, torch.float32)
        spatial_coords = spatial_coords.to(dev, torch.float32)
        if histology_features.ndim != 2 or histology_features.shape[1] != self.var_config.histology_dim:
            raise UserError(f"histology features have shape {tuple(histology_features.shape)}; the model expects "
                            f"[B, {self.var_config.histology_dim}]")
        if spatial_coords.shape != (len(histology_features), self.var_config.coord_dim):
            raise UserError(f"spatial coords have shape {tuple(spatial_coords.shape)}; the model expects "
                            f"[{len(histology_features)}, {self.var_config.coord_dim}] (one row per histology row)")
        for name, t in (("histology features", histology_features), ("spatial coords", spatial_coords)):
            if not torch.isfinite(t).all():
                rows = (~torch.isfinite(t)).any(1).nonzero().flatten().tolist()
                raise UserError(f"{name} contain NaN or inf in {len(rows)} rows (first row {rows[0]}); "
                                "remove or impute those spots first")
        if generator is None and seed is not None:
            generator = torch.Generator(device=dev).manual_seed(int(seed))
        if expected and temperature <= 0:
            raise UserError(f"temperature must be > 0 (got {temperature})")
        cond = self.var.condition(histology_features, spatial_coords)
        f_hat, tokens = self._generate(cond, temperature, top_k, top_p, greedy, generator, expected)
        self.train(was_training)
        return {"predicted_gene_expression": self.vqvae.decode_f_hat(f_hat), "tokens": tokens}

    # -- checkpoints and info ------------------------------------------------------------------------
    def metadata(self, stage: int, **more) -> dict:
        """Plain-typed description saved beside the weights (loadable with weights_only=True)."""
        return {"stage": stage, "num_genes": self.num_genes, "vqvae_config": _plain(asdict(self.vqvae_config)),
                "var_config": _plain(asdict(self.var_config)), "gene_names": list(self.gene_names or []), **more}

    def description(self, stage: int, **more) -> dict:
        """What ftcore.artefact records of a stage file: its kind, the model config, the data keys."""
        return {"kind": STAGE1_KIND if stage == 1 else COMPLETE_KIND,
                "config": {"num_genes": self.num_genes, "vqvae_config": _plain(asdict(self.vqvae_config)),
                           "var_config": _plain(asdict(self.var_config))},
                "data_keys": {"gene_names": list(self.gene_names or []), **({"data": more["data"]} if "data" in more else {})}}

    def header(self, stage: int, **more) -> dict:
        """The model header a Trainer puts in the checkpoints of `stage` (ftcore.artefact.model_header)."""
        from ftcore.artefact import model_header

        return model_header(**self.description(stage, **more), package="var-st")

    def save_stage_checkpoint(self, path: str | Path, stage: int, **extra) -> None:
        """A model file (ftcore.artefact) with extra = metadata. Stage 1: the VQ-VAE weights (load with
        set_training_stage(2, stage1_ckpt_path=...)); stage 2: the VAR with the frozen VQ-VAE it was
        trained on, like best_var.ckpt (load with load_complete_model; a VAR alone decodes nothing)."""
        from ftcore.artefact import save_model

        if stage not in (1, 2):
            raise UserError(f"stage must be 1 or 2, got {stage}")
        part = self.vqvae if stage == 1 else self
        save_model(path, part.state_dict(), **self.description(stage, **extra), extra=self.metadata(stage, **extra),
                   package="var-st")

    def save_complete_model(self, path: str | Path, **extra) -> None:
        from ftcore.artefact import save_model

        save_model(path, self.state_dict(), **self.description(2, **extra),
                   extra=self.metadata(2, complete=True, **extra), package="var-st")

    @classmethod
    def load_complete_model(cls, path: str | Path, device: str | torch.device = "cpu", trust_pickle: bool = False,
                            *, checkpoint=None):
        """A complete model (save_complete_model, or the stage-2 best checkpoint) on `device`, in eval mode
        (`checkpoint`: the file already read, by the caller)."""
        mf = read_stage_file(path, COMPLETE_KIND, trust_pickle, what="a complete var-st model",
                             hint="pass complete_model.ckpt written by training stage 2", checkpoint=checkpoint,
                             other_kinds={STAGE1_KIND: "{path} is a stage-1 (VQ-VAE only) checkpoint; train stage 2 on "
                                                       "it and load the complete_model.ckpt that writes"})
        config = mf.config
        model = cls(int(config["num_genes"]), dict(config["vqvae_config"]), dict(config["var_config"]), current_stage=2)
        sd, _ = CHECKPOINT_KEYMAP.apply(mf.state)
        _load_strict(model, sd, path)
        model.gene_names = list(mf.data_keys.get("gene_names") or []) or None
        model.stage1_source = str(path)
        model.checkpoint_extra = dict(mf.extra)
        return model.to(device).eval()

    def get_model_info(self) -> dict:
        n_vq = sum(p.numel() for p in self.vqvae.parameters())
        n_var = sum(p.numel() for p in self.var.parameters())
        return {"total_parameters": n_vq + n_var, "stage1_parameters": n_vq, "stage2_parameters": n_var,
                "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
                "current_stage": self.current_stage, "num_genes": self.num_genes,
                "scale_sizes": list(self.scale_sizes), "sequence_length": sum(self.scale_sizes),
                "vocab_size": self.vqvae_config.vocab_size}


# The kinds of var-st model file (ftcore.artefact): best_vqvae.ckpt; best_var.ckpt and complete_model.ckpt
STAGE1_KIND, COMPLETE_KIND = "var-st/stage-1", "var-st/complete"
CONFIG_KEYS = ("num_genes", "vqvae_config", "var_config")


def legacy_header(obj: dict) -> dict | None:
    """A file of an earlier var-st (no model header): extra held the stage, the configs and the genes."""
    extra = obj.get("extra")
    if not isinstance(extra, Mapping) or extra.get("stage") not in (1, 2):
        return None
    data_keys = {"gene_names": list(extra.get("gene_names") or [])}
    if "data" in extra:
        data_keys["data"] = extra["data"]
    return {"kind": STAGE1_KIND if extra["stage"] == 1 else COMPLETE_KIND,
            "config": {k: extra[k] for k in CONFIG_KEYS if k in extra}, "data_keys": data_keys}


def read_stage_file(path: str | Path, kind, trust_pickle: bool = False, *, what: str, hint: str,
                    other_kinds: Mapping[str, str] | None = None, checkpoint=None):
    """A var-st model file (this version's or an earlier one's) of `kind`, with its configs: ftcore.artefact.ModelFile."""
    from ftcore.artefact import ModelFile, load_model, model_file

    if isinstance(checkpoint, ModelFile):  # checked when it was read
        return checkpoint
    require = ("num_genes", "vqvae_config") + (("var_config",) if kind == COMPLETE_KIND else ())
    if checkpoint is not None:  # the content, read by the caller
        return model_file(checkpoint, path, kind=kind, legacy=legacy_header, other_kinds=other_kinds, require=require,
                          what=what, hint=hint)
    return load_model(path, kind=kind, trust=trust_pickle, legacy=legacy_header, other_kinds=other_kinds,
                      require=require, what=what, hint=hint)


def _plain(d: Any) -> Any:
    """Tuples -> lists, recursively, so saved configs compare equal after a round trip."""
    if isinstance(d, Mapping):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    bad = [(k, tuple(own[k].shape), tuple(sd[k].shape)) for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or bad:
        what = f"{len(missing)} missing (first: {missing[0]})" if missing else ""
        if bad:
            what += (", " if what else "") + f"shape mismatch {bad[0][0]}: model {bad[0][1]} vs checkpoint {bad[0][2]}"
        raise UserError(f"{path}: weights do not fit this model ({what}); the checkpoint was written for another configuration")
    from ftcore.loading import _refuse_non_finite, _refuse_wrong_kind  # the core's per-tensor rules, by name

    mine = {k: sd[k] for k in own}
    _refuse_wrong_kind(mine, own, str(path))
    _refuse_non_finite(mine, {name for name, _ in module.named_parameters()}, str(path))
    module.load_state_dict(mine, strict=True)


# Checkpoints written by a Lightning module that holds the model as `self.model` (as the user's
# src/main.py does) carry a "model." prefix; the rest of the names are this file's.
CHECKPOINT_KEYMAP = KeyMap(renames=(Rename(r"^model\.(vqvae|var)\.", r"\1."),))


__all__ = ["VQVAEConfig", "VARConfig", "PRESETS", "MultiScaleResidualQuantizer", "MultiScaleGeneVQVAE",
           "GeneVARTransformer", "TwoStageVARST", "codebook_stats", "sample_tokens", "CHECKPOINT_KEYMAP"]
