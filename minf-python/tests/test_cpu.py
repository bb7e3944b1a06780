"""CPU-side tests of the minf package: no torch and no GPU needed (NVRTC is, for warm)."""

import os
import re

import pytest

import minf

SMALL = dict(arch=["sm_80"], patterns=["dense"], head_dims=[64], dtypes=["bf16"])


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MINF_CACHE_DIR", str(path))
    monkeypatch.delenv("MINF_DISABLE_JIT", raising=False)
    return path


def test_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", minf.__version__)


def test_minf_error_is_runtime_error():
    assert issubclass(minf.MinfError, RuntimeError)


def test_minf_error_pickles(cache_dir):
    import pickle

    error = pickle.loads(pickle.dumps(minf.MinfError("no CUDA driver found")))
    assert type(error) is minf.MinfError and str(error) == "no CUDA driver found"


def test_doctor_reports_cache_and_nvrtc(cache_dir):
    report = minf.doctor()
    assert report["cache_dir"] == str(cache_dir)
    assert report["jit_enabled"] is True
    assert report["nvrtc_error"] is None, report["nvrtc_error"]
    assert isinstance(report["nvrtc_version"], tuple) and report["nvrtc_path"]
    text = str(report)
    assert f"cache dir:    {cache_dir}" in text
    assert "nvrtc:        " in text and "target arch:  " in text


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="this machine has a GPU")
def test_doctor_without_gpu_says_why(cache_dir):
    report = minf.doctor()
    assert report["gpu"] is None and report["target_arch"] is None
    assert report["gpu_error"]
    assert str(report).startswith("gpu:          none: ")
    assert report["target"].startswith("none without a GPU")


# One attention kernel plus the arch's index kernels: vs_convert, vs_scores, est_select,
# tile_choice and lse_merge.
SMALL_KERNELS = 1 + 5


def test_warm_compiles_then_finds_in_cache(cache_dir):
    first = minf.warm(**SMALL, jobs=2)
    assert (first["compiled"], first["cached"], first["failed"]) == (SMALL_KERNELS, 0, 0), first
    assert (first["attention"], first["index"]) == (1, SMALL_KERNELS - 1)
    assert first["cache_dir"] == str(cache_dir) and first["arch"] == ["sm_80"]
    second = minf.warm(**SMALL)
    assert (second["compiled"], second["cached"], second["failed"]) == (0, SMALL_KERNELS, 0), second


def test_warm_accepts_single_values(cache_dir):
    counts = minf.warm(arch="sm_80", patterns="dense", head_dims=64, dtypes="bf16")
    assert counts["compiled"] + counts["cached"] == SMALL_KERNELS


def test_warm_takes_numpy_head_dims(cache_dir):
    np = pytest.importorskip("numpy")
    for head_dims in (np.int64(64), np.array(64), np.array([64])):
        counts = minf.warm(arch="sm_80", patterns="dense", head_dims=head_dims, dtypes="bf16")
        assert counts["compiled"] + counts["cached"] == SMALL_KERNELS, (head_dims, counts)


def test_warm_takes_more_jobs_than_kernels(cache_dir):
    counts = minf.warm(**SMALL, jobs=2**70)
    assert (counts["compiled"], counts["failed"]) == (SMALL_KERNELS, 0), counts


def test_warm_unwritable_cache_raises_minf_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MINF_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(minf.MinfError, match="the kernel cache cannot be written .*nothing was compiled"):
        minf.warm(**SMALL)


@pytest.mark.parametrize(
    "change, error, text",
    [
        (dict(arch=["sm_70"]), ValueError, r'invalid arch "sm_70": allowed sm_80, sm_86, sm_89, sm_90, sm_90a'),
        (dict(patterns=["sparse"]), ValueError, r'invalid patterns "sparse": allowed dense, a_shape'),
        (dict(head_dims=[65]), ValueError, r"invalid head_dims 65: allowed \[64, 96, 128, 256\]"),
        (dict(head_dims=2**70), ValueError, r"invalid head_dims 1180591620717411303424: allowed"),
        (dict(head_dims=[64, -1]), ValueError, r"invalid head_dims -1: allowed"),
        (dict(dtypes=["fp32"]), ValueError, r'invalid dtypes "fp32": allowed bf16, f16'),
        (dict(dtypes=[]), ValueError, r"dtypes is empty"),
        (dict(jobs=0), ValueError, r"jobs must be at least 1, got 0"),
        (dict(jobs=-1), ValueError, r"jobs must be at least 1, got -1"),
        (dict(jobs=1.5), TypeError, r"jobs must be an integer, got float"),
        (dict(heads=-1), ValueError, r"heads must be non-negative, got -1"),
        (dict(heads=2**64), ValueError, r"heads 18446744073709551616 is too large"),
        (dict(config="x.json", patterns=None, starting_layer=-1), ValueError,
         r"starting_layer must be non-negative, got -1"),
        (dict(arch=80), TypeError, r"arch must be a string or a list of strings"),
        (dict(head_dims=["64"]), TypeError, r"head_dims must be an integer or a list of integers"),
        (dict(head_dims="64"), TypeError, r"head_dims must be an integer or a list of integers"),
        (dict(head_dims=[64.0]), TypeError, r"head_dims must be an integer or a list of integers"),
        (dict(heads=32), ValueError, r"heads needs config"),
        (dict(config="x.json"), ValueError, r"patterns and config exclude each other"),
    ],
)
def test_warm_bad_arguments(cache_dir, change, error, text):
    with pytest.raises(error, match=text):
        minf.warm(**{**SMALL, **change})
    assert not cache_dir.exists(), "nothing is written on bad arguments"


def test_warm_config_with_unknown_shape_asks_for_heads(cache_dir, tmp_path):
    config = tmp_path / "custom.json"
    config.write_text("[]")
    with pytest.raises(ValueError, match="pass heads .* and head_dims"):
        minf.warm(arch="sm_80", config=config)


def test_a_missing_config_says_so_before_asking_for_its_shape(cache_dir, tmp_path):
    missing = tmp_path / "custom.json"
    with pytest.raises(minf.MinfError, match="custom.json: cannot read the pattern config"):
        minf.warm(arch="sm_80", config=missing)
    with pytest.raises(minf.MinfError, match="custom.json: cannot read the pattern config"):
        minf.Prefill(missing)


def test_warm_bad_config_raises_minf_error(cache_dir, tmp_path):
    config = tmp_path / "custom.json"
    config.write_text("not json")
    with pytest.raises(minf.MinfError, match="custom.json"):
        minf.warm(arch="sm_80", config=config, heads=32, head_dims=128)
