"""Tests for editing/edits.py: pure heatmap edits and their CLI parsers."""

import math

import numpy as np
import pytest
import torch

from editing.edits import (
    Edit,
    apply_edit,
    apply_edits,
    drag_centers,
    move,
    parse_move,
    parse_remove,
    parse_restyle,
    parse_scale,
    remove,
    restyle,
    scale,
)
from training.heatmaps import build_sampler, render


@pytest.fixture
def hier():
    return build_sampler("hierarchical")(2, generator=0)


@pytest.fixture
def indoor():
    return build_sampler("multi_object")(2, generator=1)


def _snapshot(spec):
    return spec.to_json()


def test_move_level0_propagates_on_hierarchical(hier):
    before = _snapshot(hier)
    out = move(hier, 0, 0, 0.1, -0.05)
    assert _snapshot(hier) == before  # input unchanged
    delta = torch.tensor([0.1, -0.05])
    for lvl in range(3):
        assert torch.allclose(out.centers[lvl] - hier.centers[lvl], delta.expand_as(hier.centers[lvl]))
    deeper = move(hier, 2, 3, 0.2, 0.0)
    assert torch.allclose(deeper.centers[2][:, 3, 0] - hier.centers[2][:, 3, 0], torch.full((2,), 0.2))
    assert torch.equal(deeper.centers[2][:, :3], hier.centers[2][:, :3])
    assert torch.equal(deeper.centers[0], hier.centers[0]) and torch.equal(deeper.centers[1], hier.centers[1])


def test_move_does_not_propagate_on_flat_specs(indoor):
    out = move(indoor, 0, 1, 0.1, 0.1)
    assert torch.allclose(out.centers[0][:, 1] - indoor.centers[0][:, 1], torch.full((2, 2), 0.1))
    assert torch.equal(out.centers[0][:, [0, 2]], indoor.centers[0][:, [0, 2]])
    flat = build_sampler("non_hierarchical")(2, generator=0)
    assert torch.equal(move(flat, 0, 0, 0.1, 0.1).centers[1], flat.centers[1])


def test_scale_remove_restyle(hier, indoor):
    before = _snapshot(indoor)
    s = scale(hier, 1, 1, 2.0)
    assert torch.allclose(s.sigmas[1][:, 1], 2 * hier.sigmas[1][:, 1]) and torch.equal(s.sigmas[1][:, 0],
                                                                                        hier.sigmas[1][:, 0])
    r = remove(indoor, 2)
    assert r.alive[0][:, 2].eq(0).all() and r.alive[0][:, :2].eq(1).all()
    assert render(r, 8, 0)[:, 2].abs().max() == 0
    assert remove(hier, 3, level=2).alive[2][:, 3].eq(0).all()
    st = restyle(indoor, 1, 1234)
    assert st.style_seeds[:, 1].eq(1234).all() and torch.equal(st.style_seeds[:, 0], indoor.style_seeds[:, 0])
    assert _snapshot(indoor) == before
    with pytest.raises(ValueError, match="style_seeds"):
        restyle(hier, 0, 1)
    with pytest.raises(ValueError, match="factor"):
        scale(hier, 0, 0, 0.0)


def test_range_errors_name_the_value(hier, indoor):
    with pytest.raises(ValueError, match=r"level=3 .*0\.\.2"):
        move(hier, 3, 0, 0.1, 0.1)
    with pytest.raises(ValueError, match=r"index=2 .*0\.\.1"):
        scale(hier, 1, 2, 1.5)
    with pytest.raises(ValueError, match=r"index=3 .*0\.\.2"):
        remove(indoor, 3)
    with pytest.raises(ValueError, match=r"level=1"):
        remove(indoor, 0, level=1)


def test_drag_centers_eq6():
    spec = build_sampler("multi_object")(1, generator=2)
    spec.centers[0][0] = torch.tensor([[0.2, 0.2], [0.25, 0.2], [0.8, 0.8]])
    out = drag_centers(spec, handle=(0.2, 0.21), target=(0.4, 0.31), radius=0.1, alpha=0.5)
    assert torch.allclose(out.centers[0][0, :2], spec.centers[0][0, :2] + torch.tensor([0.1, 0.05]))
    assert torch.equal(out.centers[0][0, 2], spec.centers[0][0, 2])
    again, caught = drag_centers(spec, handle=(0.2, 0.21), target=(0.4, 0.31), radius=0.1, alpha=0.5,
                                 return_moved=True)
    assert caught.tolist() == [[True, True, False]] and torch.equal(again.centers[0], out.centers[0])
    # Pixel coordinates instead of fractions would catch nothing, silently: refused.
    with pytest.raises(ValueError, match=r"handle \[8.0, 8.0\] is outside the image: .*fractions"):
        drag_centers(spec, handle=(8, 8), target=(12, 8), radius=0.1)
    with pytest.raises(ValueError, match=r"target \[0.5, -0.25\] is outside the image"):
        drag_centers(spec, handle=(0.5, 0.5), target=(0.5, -0.25), radius=0.1)
    with pytest.raises(ValueError, match=r"radius must be in \[0, sqrt\(2\)\]"):
        drag_centers(spec, handle=(0.5, 0.5), target=(0.5, 0.6), radius=3)
    _, caught = drag_centers(spec, handle=(1.0, 0.0), target=(0.0, 1.0), radius=0.05, return_moved=True)
    assert not caught.any()  # the image's corners are valid points
    hier = build_sampler("hierarchical")(2, generator=3)
    c0 = hier.centers[0][0, 0].tolist()
    moved = drag_centers(hier, handle=c0, target=(c0[0] + 0.1, c0[1]), radius=1e-4, alpha=1.0)
    assert torch.allclose(moved.centers[2][0] - hier.centers[2][0], torch.tensor([0.1, 0.0]).expand(4, 2))
    assert torch.equal(moved.centers[2][1], hier.centers[2][1])  # other sample: its centre is far away
    with pytest.raises(ValueError, match="handle"):
        drag_centers(hier, handle=(0.1,), target=(0.2, 0.2), radius=0.1, alpha=1)


def test_parsers_and_apply_edits(hier):
    assert parse_move("0:0:0.1,-0.2") == Edit("move", level=0, index=0, dx=0.1, dy=-0.2)
    assert parse_scale("1:1:1.5") == Edit("scale", level=1, index=1, factor=1.5)
    assert parse_remove("2") == Edit("remove", index=2)
    assert parse_remove("2:3") == Edit("remove", level=2, index=3)
    assert parse_restyle("1:77") == Edit("restyle", index=1, seed=77)
    out = apply_edits(hier, [parse_move("0:0:0.1,0"), parse_scale("2:0:0.5"), parse_remove("1:0")])
    assert torch.allclose(out.centers[1] - hier.centers[1], torch.tensor([0.1, 0.0]).expand(2, 2, 2))
    assert torch.allclose(out.sigmas[2][:, 0], hier.sigmas[2][:, 0] * 0.5)
    assert out.alive[1][:, 0].eq(0).all()
    assert apply_edits(hier, []) is not hier


@pytest.mark.parametrize("func,text,bad", [
    (parse_move, "0:0:0.1", "DX,DY"), (parse_move, "a:0:0.1,0.2", "'a'"), (parse_move, "0:0:x,0.2", "'x'"),
    (parse_scale, "0:0:-1", "'-1'"), (parse_scale, "0:0", "LEVEL:INDEX:FACTOR"),
    (parse_remove, "one", "'one'"), (parse_remove, "1:2:3", "1:2:3"),
    (parse_restyle, "1:seed", "'seed'"), (parse_restyle, "-1:3", "'-1'"),
])
def test_parse_errors_name_the_text(func, text, bad):
    with pytest.raises(ValueError, match=bad.replace(".", r"\.").replace("'", "'")):
        func(text)


def test_integral_scalars_are_accepted(hier, indoor):
    """NumPy and tensor integers (what an editor or a notebook hands over) act like ints."""
    ref = move(hier, 1, 1, 0.1, 0.0)
    for level, index in ((np.int64(1), np.int32(1)), (torch.tensor(1), torch.tensor(1))):
        assert move(hier, level, index, 0.1, 0.0).to_json() == ref.to_json()
    assert scale(hier, np.int64(2), torch.tensor(3), 2.0).to_json() == scale(hier, 2, 3, 2.0).to_json()
    assert remove(indoor, np.int64(2), level=torch.tensor(0)).to_json() == remove(indoor, 2).to_json()
    st = restyle(indoor, np.int64(1), np.int64(99))
    assert st.style_seeds[:, 1].eq(99).all() and st.to_json() == restyle(indoor, 1, 99).to_json()
    c0 = hier.centers[0][0, 0].tolist()
    dragged = drag_centers(hier, handle=c0, target=(c0[0] + 0.1, c0[1]), radius=1e-4, level=np.int64(0))
    assert dragged.to_json() == drag_centers(hier, handle=c0, target=(c0[0] + 0.1, c0[1]), radius=1e-4).to_json()
    # Out of range still names the value, whatever its type.
    with pytest.raises(ValueError, match=r"index=4 out of range"):
        scale(hier, 2, np.int64(4), 2.0)


@pytest.mark.parametrize("call,match", [
    (lambda s: move(s, 0.0, 0, 0.1, 0.1), r"level must be an integer, got 0\.0 \(float\)"),
    (lambda s: move(s, 0, 1.5, 0.1, 0.1), r"index must be an integer, got 1\.5"),
    (lambda s: scale(s, True, 0, 2.0), r"level must be an integer, got True"),
    (lambda s: remove(s, torch.tensor(0.0)), r"index must be an integer"),
    (lambda s: drag_centers(s, (0.5, 0.5), (0.6, 0.5), 0.1, level="0"), r"level must be an integer"),
])
def test_non_integer_levels_and_indices_are_type_errors(hier, call, match):
    with pytest.raises(TypeError, match=match):
        call(hier)


def test_non_integer_seed_is_a_value_error(indoor):
    for seed in (1.7, 3.0, "7", True):
        with pytest.raises(ValueError, match="seed must be an integer"):
            restyle(indoor, 0, seed)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^63\)"):
        restyle(indoor, 0, np.int64(-1))


def test_apply_edits_refuses_strings(hier):
    """'1:2' could be a remove (LEVEL:INDEX) or a restyle (INDEX:SEED), so strings are not guessed at."""
    with pytest.raises(TypeError, match=r"an edit must be an Edit, got str '0:0:0\.1,0' \(parse CLI strings "
                                        r"with parse_move"):
        apply_edits(hier, ["0:0:0.1,0"])
    with pytest.raises(TypeError, match="edits must be a list of Edit, got str"):
        apply_edits(hier, "0:0:0.1,0")
    with pytest.raises(TypeError, match="edits must be a list of Edit, got Edit"):
        apply_edits(hier, parse_move("0:0:0.1,0"))
    with pytest.raises(TypeError, match="an edit must be an Edit, got dict"):
        apply_edit(hier, {"op": "move"})
    with pytest.raises(TypeError, match="spec must be a HeatmapSpec"):
        move(hier.to_json(), 0, 0, 0.1, 0.1)


def test_edits_refuse_invalid_specs_and_results(hier):
    bad = hier.clone()
    bad.centers[1][1, 0, 0] = math.nan  # In place, as an optimiser or a notebook might.
    with pytest.raises(ValueError, match=r"centers\[1\] must be finite"):
        move(bad, 0, 0, 0.1, 0.0)
    with pytest.raises(ValueError, match=r"centers\[1\] must be finite"):
        apply_edits(bad, [])
    neg = hier.clone()
    neg.sigmas[0][0, 0] = -0.1
    with pytest.raises(ValueError, match=r"sigmas\[0\] must be finite and > 0"):
        remove(neg, 0)
    # Finite Python floats that leave float32's range are caught on the result, naming the edit.
    with pytest.raises(ValueError, match=r"move by dx=1e\+300.*centers\[0\] must be finite, got inf"):
        move(hier, 0, 0, 1e300, 0.0)
    with pytest.raises(ValueError, match=r"scale by factor=1e-60.*sigmas\[1\] must be finite and > 0, got 0"):
        scale(hier, 1, 0, 1e-60)
    with pytest.raises(ValueError, match=r"scale by factor=1e\+300"):
        scale(hier, 1, 0, 1e300)
    with pytest.raises(ValueError, match=r"drag_centers gives an invalid spec"):
        drag_centers(hier, handle=(0.5, 0.5), target=(0.6, 0.5), radius=1.0, alpha=1e300)


def test_remove_takes_the_level_by_keyword_only():
    spec = build_sampler("hierarchical")(1, generator=0)
    with pytest.raises(TypeError):
        remove(spec, 0, 2)  # move/scale take (level, index) positionally; remove refuses a positional level


def test_an_edit_names_its_option_and_a_failing_one_is_named(hier):
    for parse, text in [(parse_move, "0:1:0.1,-0.05"), (parse_scale, "1:0:2.5"), (parse_remove, "2:3"),
                        (parse_restyle, "1:99")]:
        edit = parse(text)
        assert edit.option() == f"--{edit.op}={text}" and parse(edit.option().split("=", 1)[1]) == edit
    assert parse_remove("4").option() == "--remove=0:4"
    with pytest.raises(ValueError, match=r"^--scale=9:0:2: level=9 out of range"):
        apply_edits(hier, [Edit("move", dx=0.1), Edit("scale", level=9, factor=2.0)])
