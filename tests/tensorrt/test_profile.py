"""Deployment profiles: the shipped ones load, bad ones fail naming the key."""

from __future__ import annotations

import pytest

from exporter.tensorrt.profile import (
    ProfileError,
    available_profiles,
    load_profile,
    profile_from_dict,
    version_in_range,
)

from conftest import one_line_error, run_cli

SHIPPED = {"jetson-orin-nano", "jetson-agx-orin", "t4", "l4", "a100", "h100", "gpu-fp16"}


def test_shipped_profiles_load():
    names = {p.stem for p in available_profiles()}
    assert names >= SHIPPED
    for name in names:
        profile = load_profile(name)
        assert profile.batch.min <= profile.batch.opt <= profile.batch.max and profile.description
    orin = load_profile("jetson-orin-nano")
    assert (orin.compute_capability, orin.precision, orin.tensorrt) == ("8.7", "fp16", ">=10.3,<11")
    assert orin.workspace_bytes == 1024 * 1024 * 1024


def test_user_profile_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('precision = "fp32"\nworkspace_mib = 512\n[batch]\nmin = 2\nopt = 2\nmax = 2\n')
    profile = load_profile(str(path))
    assert (profile.name, profile.precision, profile.batch.max) == ("mine", "fp32", 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"precison": "fp16"}, "unknown key 'precison'"),
        ({"batch": {"min": 1, "opt": 1, "max": 1, "maxx": 3}}, "unknown key 'batch.maxx'"),
        ({"batch": {"min": 4, "opt": 2, "max": 8}}, "min <= opt <= max"),
        ({"batch": {"min": 0, "opt": 1, "max": 1}}, "batch.min must be a positive integer"),
        ({"precision": "int4"}, "precision must be one of"),
        ({"precision": "int8"}, "needs calibration data"),
        ({"precision": "fp8", "compute_capability": "8.7"}, "needs compute capability >= 8.9"),
        ({"precision": "bf16", "compute_capability": "7.5"}, "needs compute capability >= 8.0"),
        ({"dla_core": 0, "compute_capability": "8.9"}, "needs a Jetson GPU"),
        ({"dla_core": 0, "compute_capability": "8.7", "precision": "fp32"}, "needs precision fp16 or int8"),
        ({"hardware_compatibility": "ampere_plus", "compute_capability": "7.5"}, "needs compute capability >= 8.0"),
        ({"hardware_compatibility": "same_compute_capability", "compute_capability": "7.2"}, ">= 7.5, got '7.2'"),
        (
            {"dla_core": 0, "compute_capability": "8.7", "batch": {"min": 1, "opt": 4, "max": 16}},
            r"dla_core = 0 needs a static batch \(batch.min = batch.opt = batch.max\)",
        ),
        ({"builder_optimization_level": 7}, "0..5"),
        ({"tensorrt": "~10"}, "cannot read version clause"),
    ],
)
def test_impossible_profiles_name_the_key(data, message):
    with pytest.raises(ProfileError, match=message):
        profile_from_dict("bad", data)


def test_int8_with_calibration_and_dla_on_orin_are_fine():
    assert profile_from_dict("q", {"precision": "int8", "calibration": "demo"}).precision == "int8"
    assert profile_from_dict("d", {"dla_core": 1, "compute_capability": "8.7"}).dla_core == 1
    static = {"min": 8, "opt": 8, "max": 8}
    assert profile_from_dict("d", {"dla_core": 0, "compute_capability": "8.7", "batch": static}).batch.max == 8


def test_same_compute_capability_is_allowed_from_turing():
    """NvInfer.h (10.9+): kSAME_COMPUTE_CAPABILITY "is only supported for engines built on NVIDIA
    Turing and later GPUs" (7.5), kAMPERE_PLUS on Ampere and later (8.0)."""
    level = {"hardware_compatibility": "same_compute_capability"}
    assert profile_from_dict("t", {**level, "compute_capability": "7.5"}).cc == (7, 5)


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("10.3.0.26", ">=10.3,<11", True),
        ("11.0.0", ">=10.3,<11", False),
        ("10.2.0", ">=10.3,<11", False),
        ("10.13.3", ">=10.0,<12", True),
        ("10.3", "==10.3", True),
    ],
)
def test_version_ranges(version, spec, expected):
    assert version_in_range(version, spec) is expected


def test_cli_profiles_and_unknown_profile(tmp_path):
    result = run_cli("profiles")
    assert result.exit_code == 0 and "jetson-orin-nano" in result.stdout and "8.7" in result.stdout
    result = run_cli("build", "-p", "16", "--profile", "jetson-nano-2gb", "--out", str(tmp_path / "b"))
    assert result.exit_code == 2 and "no profile 'jetson-nano-2gb'" in one_line_error(result)
