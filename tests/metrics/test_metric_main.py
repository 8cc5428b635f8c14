import json

import pytest

from metrics import metric_main


@pytest.mark.parametrize("name", [
    "fid50k_full", "fid50k", "kid50k_full", "kid50k", "pr50k3_full", "pr50k3", "ppl2_wend", "ppl_zfull",
    "ppl_wfull", "ppl_zend", "ppl_wend", "is50k", "swd", "comove", "fid1k_full", "kid2k_full", "pr1k3_full",
    "comove1k", "fid64_full", "swd2k", "comove300", "ppl2_wend1k"])
def test_valid_names(name):
    assert metric_main.is_valid_metric(name)


@pytest.mark.parametrize("name", ["fid", "fid0_full", "fidk_full", "kid50k_fast", "nope", "pr50k_full"])
def test_invalid_names(name):
    assert not metric_main.is_valid_metric(name)


def test_presets_are_registered():
    assert {"fid50k_full", "pr50k3_full", "comove1k"} <= set(metric_main._metric_dict)
    assert metric_main.parse_count("50k", 1) == 50000 and metric_main.parse_count("64", 1) == 64


def test_calc_metric_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="fid50k_full"):
        metric_main.calc_metric("fidx", None, {})


def test_calc_and_report_fid(stub_G, toy_dataset, fake_detector, tmp_path):
    result = metric_main.calc_metric("fid32_full", stub_G, {}, "cpu", progress=False, dataset=toy_dataset,
                                     batch_size=16)
    assert set(result) == {"results", "metric", "total_time", "total_time_str", "num_gpus", "snapshot_pkl",
                           "timestamp", "detectors", "data"}
    assert result["detectors"] == {"inception": fake_detector.identity}  # which model measured it
    assert result["results"]["fid32_full"] > 0 and fake_detector.images_seen == 40 + 32

    class Writer:
        def __init__(self):
            self.scalars = {}

        def add_scalar(self, tag, value, global_step=None):
            self.scalars[tag] = value

    writer = Writer()
    metric_main.report_metric(result, run_dir=str(tmp_path), snapshot_path=str(tmp_path / "snap.pt"),
                              writer=writer)
    metric_main.report_metric(result, run_dir=str(tmp_path))
    lines = (tmp_path / "metric-fid32_full.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["snapshot_pkl"] == "snap.pt"
    assert json.loads(lines[0])["detectors"] == {"inception": fake_detector.identity}
    assert writer.scalars == {"Metrics/fid32_full": result["results"]["fid32_full"]}


def test_report_prints_without_run_dir(capsys):
    metric_main.report_metric(dict(results={"x": 1.0}, metric="x"))
    assert json.loads(capsys.readouterr().out)["results"] == {"x": 1.0}


def test_check_metric_finds_comove_failures_before_computing():
    from training import config, networks

    def G_of(cfg):
        G_kwargs, _ = config.network_kwargs(config.load_preset(cfg), 16, 3, 0, fp32=True)
        return networks.Generator(**G_kwargs)

    spatial, baseline = G_of("tiny-spatial"), G_of("tiny")
    metric_main.check_metric("comove1k", spatial, {"data": "synthetic:shapes:16"})  # its own segmenter
    metric_main.check_metric("fid1k_full", baseline, {"data": "real.zip"})  # nothing to check
    with pytest.raises(ValueError, match="spatial generator"):
        metric_main.check_metric("comove", baseline, {"data": "synthetic:shapes:16"})
    with pytest.raises(ValueError, match="needs a segmenter"):
        metric_main.check_metric("comove64", spatial, {"data": "real.zip"})
    with pytest.raises(ValueError, match="segmenter="):
        metric_main.check_metric("comove64", spatial, {"data": "real.zip"}, segmenter="sam")
    with pytest.raises(ValueError, match="not a metric"):
        metric_main.check_metric("fidelity", spatial, {})
