"""Write the get-yeast bad-input corpus (small files + cases.json). Deterministic; re-run to regenerate:

    python tests/bad_inputs/get-yeast/make_corpus.py

cases.json maps a case name to the `get-yeast` argv, the phrase its one-line error must contain and,
for a few, environment variables (`env`, e.g. HOME for `~` in a config file). Placeholders, in argv,
phrase and env: {corpus} this folder, {out} a fresh output dir, {tmp} the case's scratch dir (holds
an empty folder `a_folder`, and `has_dirs`, a folder holding the folders metrics.json/ and
predictions.csv/), {tiny_model} the packaged yeast_model_tiny.yaml, {fixtures} GET's real
checkpoint layouts (packages/get-yeast/tests/fixtures/get_layouts). good.csv is a valid table the
config/checkpoint cases use; trained_model.pth a valid (tiny) get-yeast training checkpoint for the
evaluate cases. The shared checkpoint corpus (../checkpoints) is fed to `get-yeast train --checkpoint`
by the test as well.
"""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile
from pathlib import Path

import torch
import yaml

from ftcore.config import from_dict
from get_yeast.config import LoraConfig, packaged_config
from get_yeast.data import DataConfig, drug_vocabulary, split_samples, validate_frame
from get_yeast.model import GETYeast, YeastModelConfig
from get_yeast.synthetic import make_yeast_table, write_get_checkpoint

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
TRAIN = ["train", "--data", "{corpus}/good.csv", "--model-config", "{tiny_model}", "--output", "{out}",
         "--max-steps", "1", "--no-progress"]
# GET's layouts at the fixtures' size (24 features, 8 dim, 2 heads); the corpus files have 1 layer
SMALL = ["--set", "model.region_model.embed_dim=8", "--set", "model.region_model.num_heads=2"]
ONE_LAYER = ["--set", "model.region_model.num_layers=1"]


def _layout_writers():
    """packages/get-yeast/tests/fixtures/make_get_layouts.py: GET's own names and checkpoint dicts."""
    path = ROOT / "packages" / "get-yeast" / "tests" / "fixtures" / "make_get_layouts.py"
    spec = importlib.util.spec_from_file_location("make_get_layouts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.NUM_LAYERS = 1  # small corpus files; the cases say num_layers=1
    return module


def truncate_record(path: Path, member: str = "/data/0", cut: int = 8) -> None:
    """Rewrite a torch zip member by member, one tensor record `cut` bytes short: still a valid archive."""
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            record = zin.read(info.filename)
            zout.writestr(info, record[:-cut] if info.filename.endswith(member) else record)
    path.write_bytes(buf.getvalue())


def main() -> None:
    cases: dict[str, dict] = {}
    good = make_yeast_table(n_conditions=6, n_windows=1, n_regions=4, seed=7)

    def case(name: str, argv: list[str], phrase: str, env: dict | None = None) -> None:
        assert name not in cases, name
        cases[name] = {"argv": argv, "phrase": phrase} | ({"env": env} if env else {})

    def with_data(name: str, argv: list[str] = TRAIN) -> list[str]:
        return [("{corpus}/" + name if a == "{corpus}/good.csv" else a) for a in argv]

    def table(name: str, df, argv: list[str] = TRAIN) -> list[str]:
        df.to_csv(HERE / name, index=False)
        return with_data(name, argv)

    def edit(row: int = 2, **changes):
        df = good.copy()
        for col, value in changes.items():
            df[col] = df[col].astype(object)
            df.loc[df.index[row], col] = value
        return df

    good.to_csv(HERE / "good.csv", index=False)
    # ---- tables
    case("missing_medium_column", table("missing_medium_column.csv", good.drop(columns=["medium"])), "missing column 'medium'")
    case("missing_target_column", table("missing_target_column.csv", good.rename(columns={"expression": "tpm"})),
         "missing column 'expression'")
    case("nan_accessibility", table("nan_accessibility.csv", edit(accessibility=float("nan"))), "'accessibility' has 1 non-finite")
    case("inf_expression", table("inf_expression.csv", edit(expression=float("inf"))), "'expression' has 1 non-finite")
    case("text_in_motif", table("text_in_motif.csv", edit(motif_HSF1="strong")), "'motif_HSF1' has 1 non-finite")
    case("unknown_medium", table("unknown_medium.csv", edit(medium="LB")), "unknown medium 'LB'")
    case("temperature_out_of_range", table("temperature_out_of_range.csv", edit(temperature=300.0)), "outside 20-45 C")
    case("temperature_missing", table("temperature_missing.csv", edit(temperature=float("nan"))), "'temperature' is blank")
    case("od600_too_high", table("od600_too_high.csv", edit(preculture_od600=7.5)), "preculture_od600 7.5")
    case("negative_drug_concentration", table("negative_drug_concentration.csv",
                                              edit(drug="rapamycin", drug_concentration_M=-1e-6)), "must be > 0")
    case("unknown_carbon_source", table("unknown_carbon_source.csv", edit(carbon_source="sucrose")), "unknown carbon_source 'sucrose'")
    dup = good.copy()
    dup.loc[1, "region"] = dup.loc[0, "region"]
    case("duplicate_region", table("duplicate_region.csv", dup), "appears twice in sample")
    mixed = good.copy()
    mixed.loc[1, "temperature"] = 44.0
    case("condition_varies_within_sample", table("condition_varies_within_sample.csv", mixed), "two values of 'temperature'")
    wide = good.copy()
    wide.insert(3, "motif_EXTRA", 0.5)
    case("wrong_feature_count", table("wrong_feature_count.csv", wide), "but the model expects num_features=24")
    (HERE / "empty.csv").write_text("")
    case("empty_file", with_data("empty.csv"), "is empty (0 bytes)")
    (HERE / "header_only.csv").write_text(",".join(good.columns) + "\n")
    case("header_only", with_data("header_only.csv"), "no data rows")
    (HERE / "not_excel.xlsx").write_bytes(b"PK\x03\x04 this is not a workbook" * 4)
    case("corrupt_excel", with_data("not_excel.xlsx"), "could not be parsed as xlsx")
    case("unsupported_format", with_data("good.parquet"), "does not exist")
    case("missing_data_file", with_data("nope.csv"), "--data {corpus}/nope.csv does not exist; did you mean")
    # new: non-numeric cells name the row and the column; absurd magnitudes; NaN targets; header mistakes
    case("text_in_accessibility", table("text_in_accessibility.csv", edit(row=5, accessibility="high")),
         "column 'accessibility' has 1 non-finite/non-numeric values (first at data row 6: 'high')")
    case("comma_decimal_in_motif", table("comma_decimal_in_motif.csv", edit(motif_RAP1="0,25")),
         "'motif_RAP1' has 1 non-finite/non-numeric values (first at data row 3: '0,25')")
    case("huge_motif_value", table("huge_motif_value.csv", edit(row=3, motif_HSF1=1e38)),
         "beyond ±1e+09, first at row 3 ('cond00_win00/YG00003W'), column 3 ('motif_HSF1')")
    case("huge_expression", table("huge_expression.csv", edit(expression=-1e38)), "column 24 ('expression')")
    case("huge_accessibility", table("huge_accessibility.csv", edit(accessibility=3e10)), "('accessibility')")
    case("nan_expression", table("nan_expression.csv", edit(row=7, expression=float("nan"))),
         "'expression' has 1 non-finite/non-numeric values (first at data row 8: NaN/blank)")
    case("negative_expression", table("negative_expression.csv", good.assign(expression=good["expression"] - 3.0)),
         "target column 'expression' holds negative values")
    case("tpm_expression", table("tpm_expression.csv", good.assign(expression=(good["expression"] * 400).round(3) + 0.5)),
         "not log-transformed")
    twice = good.copy()
    (HERE / "duplicate_motif_column.csv").write_text(
        twice.to_csv(index=False).replace("motif_GAL4,", "motif_HSF1,", 1))
    case("duplicate_motif_column", with_data("duplicate_motif_column.csv"),
         "column 'motif_HSF1' appears twice (columns 6 and 7)")
    (HERE / "duplicate_target_column.csv").write_text(
        good.to_csv(index=False).replace("accessibility,expression", "expression,expression", 1))
    case("duplicate_target_column", with_data("duplicate_target_column.csv"), "column 'expression' appears twice")
    (HERE / "duplicate_after_strip.csv").write_text(
        good.to_csv(index=False).replace("motif_GAL4,", "motif_HSF1 ,", 1))
    case("duplicate_column_with_trailing_space", with_data("duplicate_after_strip.csv"), "column 'motif_HSF1' appears twice")
    narrow = good.drop(columns=["motif_AFT1"])
    case("fewer_motif_columns", table("fewer_motif_columns.csv", narrow), "--set model.region_model.num_features=23")
    case("motif_prefix_matches_nothing", TRAIN + ["--set", "data.motif_prefix=tf_"], "no motif columns (names starting with 'tf_')")
    case("single_region_sample", table("single_region_sample.csv", good.drop(index=[1, 2, 3])),
         "sample 'cond00_win00' has a single region (data row 1)")
    case("drug_hours_absurd", table("drug_hours_absurd.csv", edit(drug="rapamycin", drug_concentration_M=1e-7,
                                                                  drug_hours=1e300)), "'drug_hours' at data row 3 is")
    blank_sample = edit(row=4, sample=float("nan"))
    case("blank_sample_name", table("blank_sample_name.csv", blank_sample), "column 'sample' is blank at data row 5")
    (HERE / "tab_separated.csv").write_text(good.to_csv(index=False, sep="\t"))
    case("tsv_named_csv", with_data("tab_separated.csv"), "missing column 'sample'")
    (HERE / "csv_named.xlsx").write_text(good.head(8).to_csv(index=False))
    case("csv_named_xlsx", with_data("csv_named.xlsx"), "could not be parsed as xlsx")
    case("data_is_a_directory", [a.replace("{corpus}/good.csv", "{corpus}") for a in TRAIN], "is a directory; give the data table")
    case("data_empty_string", [a.replace("{corpus}/good.csv", "") for a in TRAIN], "--data is empty")
    case("swapped_data_and_model_config", ["train", "--data", "{tiny_model}", "--model-config", "{corpus}/good.csv",
                                           "--output", "{out}", "--max-steps", "1", "--no-progress"],
         "good.csv: expected a mapping of keys at the top level")

    # ---- configs (YAML/TOML typos, missing keys, unknown names, numbers)
    train_yaml = yaml.safe_load(packaged_config("yeast_training.yaml").read_text())
    model_yaml = yaml.safe_load(packaged_config("yeast_model_tiny.yaml").read_text())

    def config(name: str, data: dict | str, phrase: str, flag: str = "--config", extra: tuple = (),
               env: dict | None = None, encoding_bom: bool = False, base: list[str] = TRAIN) -> None:
        path = HERE / name
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        path.write_bytes(("\ufeff" if encoding_bom else "").encode() + text.encode())
        case(name.replace(".", "_"), base + [flag, "{corpus}/" + name, *extra], phrase, env)

    def training(**sections) -> dict:
        t = json.loads(json.dumps(train_yaml))
        for dotted, value in sections.items():
            section, key = dotted.split("__")
            t[section][key] = value
        return t

    def model(**sections) -> dict:
        m = json.loads(json.dumps(model_yaml))
        for dotted, value in sections.items():
            section, key = dotted.split("__")
            m[section][key] = value
        return m

    t = json.loads(json.dumps(train_yaml))
    t["training"]["max_epochs"] = t["training"].pop("epochs")
    config("training_max_epochs.yaml", t, "unknown key 'training.max_epochs'")
    t = json.loads(json.dumps(train_yaml))
    del t["training"]["warmup_steps"]
    config("training_missing_warmup.yaml", t, "missing key 'training.warmup_steps'")
    t = json.loads(json.dumps(train_yaml))
    del t["task"]
    config("training_missing_task.yaml", t, "missing key 'task'")
    t = json.loads(json.dumps(train_yaml))
    t["machine"] = {"batch_size": 8}
    config("training_machine_batch_size.yaml", t, "unknown key 'machine'")
    config("unknown_split.yaml", training(data__split_by="chromosome"), "unknown data.split_by 'chromosome'")
    config("unknown_schedule.yaml", training(training__schedule="linear"), "unknown schedule 'linear'")
    config("unknown_lora_target.yaml", training(lora__target_modules=["attn.query"]), "'attn.query' names no Linear layer")
    config("lr_not_a_number.yaml", training(training__lr="fast"), "'training.lr' should be a number")
    config("syntax_error.yaml", "training:\n  epochs: 3\n   lr: [0.1\n", "YAML syntax error")
    config("syntax_error.toml", "[training]\nepochs = 3\nlr = 1e-3 x\n", "TOML syntax error")
    m = json.loads(json.dumps(model_yaml))
    m["region_model"]["num_layer"] = m["region_model"].pop("num_layers")
    config("model_num_layer_typo.yaml", m, "unknown key 'region_model.num_layer'", flag="--model-config")
    config("model_heads_not_divisible.yaml", model(region_model__num_heads=5), "not divisible by num_heads 5", flag="--model-config")
    config("model_media_without_ypd.yaml", model(condition__media=["SC"]), "unknown medium 'YPD'", flag="--model-config")
    # new: numbers in the YAML files (NaN passes every `<` check)
    config("lr_nan.yaml", training(training__lr=float("nan")), "'training.lr' is nan")
    config("lr_inf.yaml", training(training__lr=float("inf")), "'training.lr' is inf")
    no_steps = [a for a in TRAIN if a not in ("--max-steps", "1")]
    config("max_steps_nan.yaml", training(training__max_steps=float("nan")), "'training.max_steps' is nan", base=no_steps)
    config("epochs_zero_no_max_steps.yaml", training(training__epochs=0), "epochs is 0 and max_steps unset", base=no_steps)
    config("batch_size_zero.yaml", training(training__batch_size=0), "'training.batch_size' is 0; it must be >= 1")
    config("batch_size_fraction.yaml", training(training__batch_size=0.5), "'training.batch_size' should be a whole number")
    config("seed_negative.yaml", training(experiment__seed=-5), "'experiment.seed' is -5")
    config("lora_rank_zero.yaml", training(lora__r=0), "'lora.r' is 0; it must be >= 1")
    config("lora_alpha_nan.yaml", training(lora__alpha=float("nan")), "'lora.alpha' is nan")
    config("lora_dropout_one.yaml", training(lora__dropout=1.0), "'lora.dropout' is 1.0; it must be >= 0 and < 1")
    config("lora_dropout_negative.yaml", training(lora__dropout=-0.1), "'lora.dropout' is -0.1")
    config("warmup_negative.yaml", training(training__warmup_steps=-10), "'training.warmup_steps' is -10")
    config("grad_clip_zero.yaml", training(training__grad_clip=0), "'training.grad_clip' is 0")
    config("val_fraction_nan.yaml", training(data__val_fraction=float("nan")), "'data.val_fraction' is nan")
    config("device_gpu_in_yaml.yaml", training(training__device="gpu"), "training.device: unknown device 'gpu'")
    config("head_hidden_dim_negative.yaml", model(region_model__head_hidden_dim=-8), "'region_model.head_hidden_dim' is -8",
           flag="--model-config")
    config("model_dropout_nan.yaml", model(region_model__dropout=float("nan")), "'region_model.dropout' is nan",
           flag="--model-config")
    config("temperature_range_reversed.yaml", model(condition__temperature_range=[45.0, 20.0]),
           "condition.temperature_range [45.0, 20.0] should be [low, high]", flag="--model-config")
    config("max_od600_zero.yaml", model(condition__max_od600=0.0), "'condition.max_od600' is 0.0", flag="--model-config")
    config("media_listed_twice.yaml", model(condition__media=["SC", "YPD", "sc", "unknown"]),
           "condition.media lists 'sc' twice", flag="--model-config")
    # a key written twice (YAML keeps the last one without a word), a BOM, ~ inside the file
    text = packaged_config("yeast_training.yaml").read_text()
    lr_line = text.splitlines().index("  lr: 0.001") + 1
    config("duplicate_key_training.yaml", text.replace("  lr: 0.001\n", "  lr: 0.001\n  lr: 10.0\n"),
           f"key 'lr' is set twice (lines {lr_line} and {lr_line + 1}); keep one")
    config("duplicate_section_training.yaml", text + "training:\n  lr: 10.0\n", "key 'training' is set twice")
    mtext = packaged_config("yeast_model_tiny.yaml").read_text()
    config("duplicate_key_model.yaml", mtext.replace("  embed_dim: 32\n", "  embed_dim: 32\n  embed_dim: 64\n"),
           "key 'embed_dim' is set twice (lines 4 and 5)", flag="--model-config")
    config("bom_training.yaml", text.replace("split_by: condition", "split_by: chromosome"),
           "unknown data.split_by 'chromosome'", encoding_bom=True)
    config("bom_model.yaml", mtext.replace("num_heads: 4", "num_heads: 5"), "not divisible by num_heads 5",
           flag="--model-config", encoding_bom=True)
    config("tilde_model_config.yaml", training() | {"model_config": "~/model_heads_not_divisible.yaml"},
           "not divisible by num_heads 5", flag="--config", env={"HOME": "{corpus}"},
           extra=())
    # --model-config overrides model_config: dropped, so the file's ~ path is used
    argv = cases["tilde_model_config_yaml"]["argv"]
    i = argv.index("--model-config")
    del argv[i:i + 2]
    config("tilde_checkpoint.yaml", training(pretrained__checkpoint="~/not_get.pt"), "none of its 1 tensors",
           env={"HOME": "{corpus}"})
    config("tilde_checkpoint_missing.yaml", training(pretrained__checkpoint="~/nope_checkpoint.pth"),
           "checkpoint {corpus}/nope_checkpoint.pth does not exist", env={"HOME": "{corpus}"})
    case("tilde_model_config_flag", TRAIN[:3] + ["--model-config", "~/model_num_layer_typo.yaml"] + TRAIN[5:],
         "unknown key 'region_model.num_layer'", env={"HOME": "{corpus}"})
    config("model_config_missing.yaml", training() | {"model_config": "no_such_model.yaml"},
           "model config {corpus}/no_such_model.yaml does not exist")
    argv = cases["model_config_missing_yaml"]["argv"]
    i = argv.index("--model-config")
    del argv[i:i + 2]
    config("top_level_list.yaml", "- training\n- lr: 0.001\n", "expected a mapping of keys at the top level")
    case("model_config_is_a_directory", [a.replace("{tiny_model}", "{corpus}") for a in TRAIN], "is a directory")
    case("config_is_a_directory", TRAIN + ["--config", "{corpus}"], "--config {corpus} is a directory")
    case("config_empty_file", TRAIN + ["--config", "{corpus}/empty.csv"], "--config {corpus}/empty.csv is empty")
    case("training_yaml_as_model_config", [a.replace("{tiny_model}", "{training_yaml}") for a in TRAIN],
         "unknown key 'experiment'")  # a placeholder: the test fills in the installed package's file
    case("model_yaml_as_training_config", TRAIN + ["--config", "{tiny_model}"], "unknown key 'region_model'")
    case("data_as_training_config", TRAIN + ["--config", "{corpus}/good.csv"], "expected a mapping of keys at the top level")

    # ---- numbers and devices on the command line / --set
    case("lr_nan_set", TRAIN + ["--set", "training.lr=nan"], "'training.lr' is nan")
    case("lr_NaN_set", TRAIN + ["--set", "training.lr=NaN"], "'training.lr' is NaN")
    case("lr_zero_set", TRAIN + ["--set", "training.lr=0"], "'training.lr' is 0.0; it must be > 0")
    case("lr_negative_set", TRAIN + ["--set", "training.lr=-1e-3"], "it must be > 0")
    case("lr_comma_decimal_set", TRAIN + ["--set", "training.lr=1,5e-3"], "'training.lr' should be a number")
    case("max_steps_nan_set", no_steps + ["--set", "training.max_steps=nan"], "'training.max_steps' is nan")
    case("epochs_zero_without_max_steps", no_steps + ["--epochs", "0"], "epochs is 0 and max_steps unset")
    case("epochs_negative", no_steps + ["--epochs", "-3"], "--epochs is -3; it must be >= 0")
    case("epochs_nan", no_steps + ["--epochs", "nan"], "--epochs is nan")
    case("epochs_fraction", no_steps + ["--epochs", "2.5"], "--epochs should be a whole number")
    case("max_steps_negative", no_steps + ["--max-steps", "-1"], "--max-steps is -1; it must be >= 1")
    case("max_steps_zero", no_steps + ["--max-steps", "0"], "--max-steps is 0; it must be >= 1")
    case("max_steps_empty", no_steps + ["--max-steps", ""], "--max-steps should be a number, got ''")
    case("batch_size_zero", TRAIN + ["--batch-size", "0"], "--batch-size is 0; it must be >= 1")
    case("batch_size_word", TRAIN + ["--batch-size", "sixteen"], "--batch-size should be a number, got sixteen")
    case("batch_size_zero_set", TRAIN + ["--set", "training.batch_size=0"], "'training.batch_size' is 0")
    case("seed_negative", TRAIN + ["--seed", "-1"], "--seed is -1; it must be >= 0 and < 4.29497e+09")
    case("seed_too_big", TRAIN + ["--seed", "4294967296"], "--seed is 4294967296")
    case("seed_negative_set", TRAIN + ["--set", "experiment.seed=-7"], "'experiment.seed' is -7")
    case("lora_rank_zero_set", TRAIN + ["--set", "lora.r=0"], "'lora.r' is 0")
    case("lora_alpha_nan_set", TRAIN + ["--set", "lora.alpha=nan"], "'lora.alpha' is nan")
    case("lora_dropout_one_set", TRAIN + ["--set", "lora.dropout=1.0"], "'lora.dropout' is 1.0")
    case("head_hidden_dim_negative_set", TRAIN + ["--set", "model.region_model.head_hidden_dim=-1"],
         "'region_model.head_hidden_dim' is -1")
    case("embed_dim_zero_set", TRAIN + ["--set", "model.region_model.embed_dim=0"], "'region_model.embed_dim' is 0")
    case("fusion_hidden_nan_set", TRAIN + ["--set", "model.fusion.hidden_dim=nan"], "'fusion.hidden_dim' is nan")
    case("mlp_ratio_leaves_no_unit_set", TRAIN + ["--set", "model.region_model.mlp_ratio=0.01"],
         "region_model.mlp_ratio 0.01 leaves no MLP unit at embed_dim 32")
    case("embed_dim_typed_with_extra_zeros_set", TRAIN + ["--set", "model.region_model.embed_dim=32000000"],
         "describes about 2.5e+16 parameters")
    case("weight_decay_negative_set", TRAIN + ["--set", "training.weight_decay=-0.01"], "'training.weight_decay' is -0.01")
    case("patience_zero_set", TRAIN + ["--set", "training.patience=0"], "'training.patience' is 0")
    case("permutation_repeats_zero_set", TRAIN + ["--set", "task.permutation_repeats=0"], "'task.permutation_repeats' is 0")
    case("test_fraction_one_set", TRAIN + ["--set", "data.test_fraction=1"], "'data.test_fraction' is 1")
    case("override_not_key_value", TRAIN + ["--set", "training.lr"], "override 'training.lr' is not key=value")
    case("override_section_as_value", TRAIN + ["--set", "training=3"], "'training' is a value, not a section")
    case("checkpoint_empty_in_config", TRAIN + ["--set", "pretrained.checkpoint="], "pretrained.checkpoint is empty")
    case("device_gpu", TRAIN + ["--device", "gpu"], "--device: unknown device 'gpu'; choose one of")
    case("device_gpu0", TRAIN + ["--device", "gpu:0"], "did you mean 'cuda:0'?")
    case("device_typo", TRAIN + ["--device", "cpuu"], "unknown device 'cpuu'")
    case("device_upper_nvidia", TRAIN + ["--device", "NVIDIA"], "did you mean 'cuda'?")
    case("device_empty", TRAIN + ["--device", ""], "unknown device ''")
    case("device_set_gpu", TRAIN + ["--set", "training.device=gpu"], "training.device: unknown device 'gpu'")
    case("unknown_flag_lr", TRAIN + ["--lr", "1e-3"], "unrecognized arguments: --lr 1e-3")
    case("subcommand_typo", ["trian", "--data", "{corpus}/good.csv"], "invalid choice: 'trian'")

    # ---- outputs
    case("output_dir_unwritable", [a.replace("{out}", "{corpus}/good.csv/run") for a in TRAIN],
         "is a file, so nothing can be created inside it")
    case("output_dir_is_a_file", [a.replace("{out}", "{corpus}/good.csv") for a in TRAIN],
         "--output {corpus}/good.csv is a file, not a directory")
    case("output_dir_read_only_place", [a.replace("{out}", "/proc/get-yeast-run") for a in TRAIN] + ["--from-scratch"],
         "is not writable")
    case("output_dir_empty", [a.replace("{out}", "") for a in TRAIN], "--output is empty")
    case("make_data_output_is_a_directory", ["make-data", "--output", "{tmp}/a_folder"],
         "--output {tmp}/a_folder is a directory; give a file path")
    case("make_data_wrong_suffix", ["make-data", "--output", "{out}/yeast.parquet"], "should end in .csv or .xlsx")
    case("make_data_output_inside_a_file", ["make-data", "--output", "{corpus}/good.csv/yeast.csv"],
         "is a file, so nothing can be created inside it")
    case("make_data_seed_negative", ["make-data", "--output", "{out}/yeast.csv", "--seed", "-2"], "--seed is -2")
    case("demo_device_gpu", ["demo", "--output", "{out}", "--device", "gpu"], "--device: unknown device 'gpu'")
    case("demo_epochs_zero", ["demo", "--output", "{out}", "--epochs", "0"], "--epochs is 0; it must be >= 1")
    case("demo_output_is_a_file", ["demo", "--output", "{corpus}/good.csv"], "is a file, not a directory")
    case("embedded_train_lr_nan", ["train", "--output", "{out}", "--no-progress", "--set", "training.lr=nan"],
         "'training.lr' is nan")
    case("embedded_train_epochs_zero", ["train", "--output", "{out}", "--no-progress", "--epochs", "0"],
         "epochs is 0 and max_steps unset")

    # ---- split plans
    names = sorted(good["sample"].unique())
    case("nothing_held_out", TRAIN + ["--set", "data.val_fraction=0", "--set", "data.test_fraction=0"],
         "no samples held out for validation/test")
    case("bad_override", TRAIN + ["--set", "training.epoch=3"], "unknown key 'training.epoch'")
    case("val_fraction_rounds_to_none", TRAIN + ["--set", "data.val_fraction=0.05"],
         "data.val_fraction 0.05 of 6 conditions rounds to none held out")
    case("fractions_leave_no_training", TRAIN + ["--set", "data.val_fraction=0.45", "--set", "data.test_fraction=0.45"],
         "too few for a train/val/test split")
    config("held_out_sample_missing.yaml", training(data__test_samples=["cond99_win00"], data__val_samples=[names[0]]),
           "data.test_samples names 'cond99_win00', which is no sample in the table")
    config("held_out_sample_typo.yaml", training(data__val_samples=[names[1].upper()]),
           f"did you mean '{names[1]}'?")
    config("val_equals_test.yaml", training(data__val_samples=names[:2], data__test_samples=names[:2]),
           "data.val_samples and data.test_samples share 2 sample(s)")
    config("everything_held_out.yaml", training(data__val_samples=names[:3], data__test_samples=names[3:]),
           "hold out all 6 samples; nothing is left to train on")
    config("held_out_lists_empty.yaml", training(data__val_samples=[], data__test_samples=[]),
           "data.val_samples and data.test_samples are both empty")
    config("held_out_sample_twice.yaml", training(data__test_samples=[names[0], names[0]]),
           f"data.test_samples lists '{names[0]}' twice")
    config("held_out_not_a_list.yaml", training(data__test_samples=names[0]), "'data.test_samples' should be a list")

    # ---- GET checkpoints: refused without the opt-in; wrong size with it
    torch.manual_seed(0)
    cfg = yaml.safe_load(packaged_config("yeast_model_tiny.yaml").read_text())
    mc = from_dict(YeastModelConfig, cfg)
    mc.condition.enabled = False
    mc.region_model.output_dim = 2
    # A GET-layout checkpoint of another width (embed_dim 16; small enough for the corpus): refused
    # without the opt-in (argparse.Namespace inside), and with it no tensor fits the tiny model.
    mc.region_model.embed_dim, mc.region_model.num_heads, mc.region_model.num_layers = 16, 2, 1
    write_get_checkpoint(HERE / "get_checkpoint_16d.pth", GETYeast(mc, 2).state_dict())
    # GET-style file (argparse.Namespace + numpy scalars): reads without --trust-checkpoint since issue 19,
    # and is refused because it is another size
    case("get_checkpoint_of_another_size", TRAIN + ["--checkpoint", "{corpus}/get_checkpoint_16d.pth"],
         "matches the GET region model by name and shape")
    case("get_checkpoint_other_size", TRAIN + ["--checkpoint", "{corpus}/get_checkpoint_16d.pth", "--trust-checkpoint"],
         "matches the GET region model by name and shape")
    torch.save({"model": {"backbone.0.weight": torch.zeros(4, 4)}}, HERE / "not_get.pt")
    case("not_a_get_checkpoint", TRAIN + ["--checkpoint", "{corpus}/not_get.pt"], "none of its 1 tensors")
    case("checkpoint_missing", TRAIN + ["--checkpoint", "{corpus}/nope.pth"], "does not exist")
    # GET's real layouts (fixture writers of packages/get-yeast/tests/fixtures), damaged
    lay = _layout_writers()
    small = TRAIN + SMALL + ONE_LAYER
    for layout in ("checkpoint-799.pth", "paper_finetuned.pth", "lightning.ckpt"):
        tag = layout.split(".")[0].replace("-", "_")
        case(f"get_layout_{tag}_of_another_size", TRAIN + ["--checkpoint", "{fixtures}/" + layout],
             "matches the GET region model by name and shape")
    case("get_layout_799_two_layers_into_one", small + ["--checkpoint", "{fixtures}/checkpoint-799.pth"],
         "13 pretrained tensors do not fit the model (first: encoder.blocks.1.norm1.weight); the checkpoint is "
         "num_layers 2, embed_dim 8, num_features 24, the model num_layers 1")
    pretrain = lay.values(lay.names_checkpoint_799(), seed=799)

    def write_799(name: str, weights) -> None:
        torch.save(lay.mae_era_dict(weights, epoch=799, seed=799, model="get_pretrain_motif_base"), HERE / name)

    ints = dict(pretrain)
    ints["encoder.blocks.0.attn.qkv.weight"] = (ints["encoder.blocks.0.attn.qkv.weight"] * 100).to(torch.int8)
    write_799("get799_int8_weights.pth", ints)
    case("get_layout_799_integer_weights", small + ["--checkpoint", "{corpus}/get799_int8_weights.pth"],
         "tensor encoder.blocks.0.attn.qkv.weight is int8 in the file but the model's is float32")
    nans = dict(pretrain)
    nans["encoder.region_embed.proj.weight"] = nans["encoder.region_embed.proj.weight"].clone()
    nans["encoder.region_embed.proj.weight"][0, :3] = float("nan")
    write_799("get799_nan_weights.pth", nans)
    case("get_layout_799_nan_weights", small + ["--checkpoint", "{corpus}/get799_nan_weights.pth"],
         "tensor region_embed.embed.weight holds 3 of 192 NaN/inf values")
    infs = dict(pretrain)
    infs["encoder.norm.bias"] = infs["encoder.norm.bias"].clone()
    infs["encoder.norm.bias"][1] = float("inf")
    write_799("get799_inf_weight.pth", infs)
    case("get_layout_799_inf_weight", small + ["--checkpoint", "{corpus}/get799_inf_weight.pth"],
         "tensor encoder.norm.bias holds 1 of 8 NaN/inf values")
    write_799("get799_truncated_record.pth", pretrain)
    truncate_record(HERE / "get799_truncated_record.pth")
    case("get_layout_799_truncated_record", small + ["--checkpoint", "{corpus}/get799_truncated_record.pth"],
         "tensor record data/0 holds")
    paper = lay.values(lay.names_paper_finetuned(), seed=41)
    paper["head.weight"] = paper["head.weight"].to(torch.float64).to(torch.int64)
    torch.save(lay.mae_era_dict(paper, epoch=99, seed=41, model="get_finetune_motif"), HERE / "paper_int64_head.pth")
    case("get_layout_paper_integer_head", small + ["--checkpoint", "{corpus}/paper_int64_head.pth"], "is int64 in the file")
    case("checkpoint_is_a_directory", TRAIN + ["--checkpoint", "{fixtures}"], "is a directory; pass the checkpoint file")
    case("checkpoint_is_the_data_table", TRAIN + ["--checkpoint", "{corpus}/good.csv"], "unrecognised checkpoint format")

    # ---- evaluate: a tiny model trained by get-yeast (as its Trainer saves it), then damaged
    mcfg = from_dict(YeastModelConfig, cfg)
    mcfg.region_model.embed_dim, mcfg.region_model.num_heads, mcfg.region_model.num_layers = 8, 2, 1
    mcfg.condition.embed_dim, mcfg.fusion.hidden_dim = 4, 8
    mcfg.condition.media = ["SC", "unknown"]  # trained without YPD
    data_cfg = DataConfig()
    sc_only = good.assign(medium="SC")
    sc_only.to_csv(HERE / "good_sc.csv", index=False)
    tbl = validate_frame(sc_only, data_cfg, mcfg.condition, "good_sc.csv")
    from get_yeast.train import build_model, make_spec

    vocab = drug_vocabulary(tbl)
    spec = make_spec(mcfg, vocab, LoraConfig(enabled=False), tbl, split_samples(tbl, data_cfg, 42))
    torch.manual_seed(1)
    trained = build_model(spec)
    state = {k: v.clone() for k, v in trained.state_dict().items()}

    def write_trained(name: str, weights: dict, **extra) -> None:
        torch.save({"model": weights, "extra": {"spec": spec}, "epoch": 1, "step": 1} | extra, HERE / name)

    write_trained("trained_model.pth", state)
    EVAL = ["evaluate", "--model", "{corpus}/trained_model.pth", "--data", "{corpus}/good_sc.csv", "--output", "{out}",
            "--set", "task.permutation_repeats=1"]
    case("evaluate_not_a_trained_model", ["evaluate", "--data", "{corpus}/good.csv", "--model", "{corpus}/not_get.pt",
                                          "--output", "{out}"], "not a get-yeast training checkpoint")
    case("evaluate_no_data_no_run_config", ["evaluate", "--model", "{corpus}/not_get.pt", "--output", "{out}"],
         "no --data given")
    case("evaluate_unseen_medium", [a.replace("good_sc.csv", "good.csv") for a in EVAL],
         "unknown medium 'YPD' at data row 1: the trained model {corpus}/trained_model.pth was built for SC, unknown only")
    sc_only.insert(3, "motif_EXTRA", 0.5)
    sc_only.to_csv(HERE / "sc_extra_motif.csv", index=False)
    sc_only = sc_only.drop(columns=["motif_EXTRA"])
    case("evaluate_wrong_feature_count", [a.replace("good_sc.csv", "sc_extra_motif.csv") for a in EVAL],
         "the model was trained on 24 (region_model.num_features=24")
    renamed = sc_only.rename(columns={"motif_GAL4": "motif_GAL80"})
    renamed.to_csv(HERE / "sc_motif_renamed.csv", index=False)
    case("evaluate_renamed_motif", [a.replace("good_sc.csv", "sc_motif_renamed.csv") for a in EVAL],
         "first difference at feature 5: 'motif_GAL80' vs 'motif_GAL4'")
    test_names = set(spec["splits"]["test"])
    sc_only[sc_only["sample"].isin(test_names)].to_csv(HERE / "sc_test_only.csv", index=False)
    case("evaluate_split_filter_leaves_nothing", [a.replace("good_sc.csv", "sc_test_only.csv") for a in EVAL]
         + ["--split", "val"], "none of the model's 'val' samples are in")
    case("evaluate_split_typo", EVAL + ["--split", "testing"], "invalid choice: 'testing'")
    case("evaluate_device_gpu", EVAL + ["--device", "gpu"], "--device: unknown device 'gpu'")
    case("evaluate_output_is_a_file", [a.replace("{out}", "{corpus}/good.csv") for a in EVAL], "is a file, not a directory")
    case("evaluate_output_inside_a_file", [a.replace("{out}", "{corpus}/good.csv/eval") for a in EVAL],
         "is a file, so nothing can be created inside it")
    case("evaluate_output_holds_a_directory_named_like_a_result", [a.replace("{out}", "{tmp}/has_dirs") for a in EVAL],
         "--output {tmp}/has_dirs: metrics.json there is a directory")
    case("train_output_holds_a_directory_named_like_a_result", [a.replace("{out}", "{tmp}/has_dirs") for a in TRAIN]
         + ["--from-scratch"], "--output {tmp}/has_dirs: metrics.json there is a directory")
    case("evaluate_model_is_a_directory", [a.replace("{corpus}/trained_model.pth", "{corpus}") for a in EVAL],
         "--model {corpus} is a directory")
    case("evaluate_model_missing", [a.replace("trained_model.pth", "best_model.pth") for a in EVAL],
         "--model {corpus}/best_model.pth does not exist")
    case("evaluate_missing_model_flag", ["evaluate", "--data", "{corpus}/good_sc.csv"], "the following arguments are required: --model")
    case("evaluate_get_checkpoint_as_model", [a.replace("{corpus}/trained_model.pth", "{fixtures}/checkpoint-799.pth") for a in EVAL],
         "not a get-yeast training checkpoint")
    case("evaluate_repeats_zero", EVAL + ["--set", "task.permutation_repeats=0"], "'task.permutation_repeats' is 0")
    nan_state = dict(state)
    nan_state["fusion.net.0.weight"] = state["fusion.net.0.weight"].clone().fill_(float("nan"))
    write_trained("trained_nan_weights.pth", nan_state)
    case("evaluate_nan_weights", [a.replace("trained_model.pth", "trained_nan_weights.pth") for a in EVAL],
         "tensor fusion.net.0.weight holds")
    int_state = dict(state)
    int_state["region_embed.embed.weight"] = state["region_embed.embed.weight"].to(torch.int32)
    write_trained("trained_int_weights.pth", int_state)
    case("evaluate_integer_weights", [a.replace("trained_model.pth", "trained_int_weights.pth") for a in EVAL],
         "tensor region_embed.embed.weight is int32 in the file but the model's is float32")
    write_trained("trained_truncated_record.pth", state)
    truncate_record(HERE / "trained_truncated_record.pth")
    case("evaluate_truncated_record", [a.replace("trained_model.pth", "trained_truncated_record.pth") for a in EVAL],
         "tensor record data/0 holds")
    bigger = {k: v for k, v in state.items()}
    bigger["region_embed.embed.weight"] = torch.zeros(16, 24)
    write_trained("trained_wrong_shape.pth", bigger)
    case("evaluate_weights_of_another_size", [a.replace("trained_model.pth", "trained_wrong_shape.pth") for a in EVAL],
         "1 shape mismatches (first: region_embed.embed.weight)")
    missing = {k: v for k, v in state.items() if not k.startswith("head_exp.")}
    write_trained("trained_missing_head.pth", missing)
    case("evaluate_weights_missing_head", [a.replace("trained_model.pth", "trained_missing_head.pth") for a in EVAL],
         "weights do not fit the model described inside it (2 missing")

    lines = [f" {json.dumps(name)}: {json.dumps(c, ensure_ascii=False)}" for name, c in cases.items()]
    (HERE / "cases.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one case a line
    big = [p.name for p in HERE.iterdir() if p.stat().st_size > 50_000]
    assert not big, f"corpus files over 50 KB: {big}"
    print(f"{len(cases)} cases written to {HERE}")


if __name__ == "__main__":
    main()
