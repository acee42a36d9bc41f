"""Tests for the ARC augmentation tools and the test-time-training task builder."""

from __future__ import annotations

import numpy as np
import pytest

from seal_env.tasks.arc_data import ArcTask
from seal_env.tasks.arc_tools import (
    Chain,
    ColorPermutation,
    Flip,
    Reflect,
    Rotate,
    Scale,
    Tile,
    Tool,
    Translate,
    Transpose,
    build_ttt_tasks,
    tools_for_config,
)

SHAPES = [(1, 1), (1, 5), (5, 1), (2, 3), (3, 7), (7, 3), (6, 6), (10, 10), (15, 4)]


def random_grid(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 10, size=shape)


def random_task(seed: int, n_demos: int, shape: tuple[int, int] = (3, 4)) -> ArcTask:
    """A task whose grids are random, so no two transformed tasks coincide by accident."""
    rng = np.random.default_rng(seed)
    pairs = tuple((random_grid(rng, shape), random_grid(rng, shape)) for _ in range(n_demos + 1))
    return ArcTask(task_id=f"random{seed}", train=pairs[:-1], test=pairs[-1:])


def all_tools() -> list[Tool]:
    rng = np.random.default_rng(0)
    return [
        *tools_for_config(True, True, True, True, rng=rng),
        Translate(1, 0),
        Translate(0, 5),
        Scale(3, 1),
        Tile(3, 2),
        ColorPermutation.random(rng),
        Chain([ColorPermutation.random(rng), Reflect(1, mirror_first=True)]),
    ]


@pytest.mark.parametrize("tool", all_tools(), ids=lambda tool: tool.name)
def test_inverse_undoes_apply(tool: Tool) -> None:
    assert tool.invertible
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        grid = random_grid(rng, shape)
        before = grid.copy()
        restored = tool.inverse(tool.apply(grid))
        np.testing.assert_array_equal(restored, grid)
        np.testing.assert_array_equal(grid, before)  # apply must not mutate its argument


def test_rotations_and_flips_match_known_results() -> None:
    grid = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(Rotate(90).apply(grid), [[3, 6], [2, 5], [1, 4]])
    np.testing.assert_array_equal(Rotate(180).apply(grid), [[6, 5, 4], [3, 2, 1]])
    np.testing.assert_array_equal(Rotate(270).apply(grid), [[4, 1], [5, 2], [6, 3]])
    np.testing.assert_array_equal(Flip(0).apply(grid), [[4, 5, 6], [1, 2, 3]])
    np.testing.assert_array_equal(Flip(1).apply(grid), [[3, 2, 1], [6, 5, 4]])
    np.testing.assert_array_equal(Transpose().apply(grid), [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(Translate(1, 2).apply(grid), [[5, 6, 4], [2, 3, 1]])


def test_reflect_appends_mirror_on_the_named_side() -> None:
    grid = np.array([[1, 2], [3, 4], [5, 6]])
    right, left = Reflect(1, mirror_first=False).apply(grid), Reflect(1, mirror_first=True).apply(grid)
    np.testing.assert_array_equal(right, [[1, 2, 2, 1], [3, 4, 4, 3], [5, 6, 6, 5]])
    np.testing.assert_array_equal(left, [[2, 1, 1, 2], [4, 3, 3, 4], [6, 5, 5, 6]])
    below = Reflect(0, mirror_first=False).apply(grid)
    assert below.shape == (6, 2)
    np.testing.assert_array_equal(below[3:], np.flipud(grid))


@pytest.mark.parametrize("shape", SHAPES)
def test_size_tools_shapes_and_contents(shape: tuple[int, int]) -> None:
    grid = random_grid(np.random.default_rng(2), shape)
    h, w = shape

    upscaled = Scale(2, 2).apply(grid)
    assert upscaled.shape == (2 * h, 2 * w)
    for dr in range(2):
        for dc in range(2):
            np.testing.assert_array_equal(upscaled[dr::2, dc::2], grid)  # every cell became a 2x2 block
    assert Scale(2, 1).apply(grid).shape == (2 * h, w)
    assert Scale(1, 3).apply(grid).shape == (h, 3 * w)

    tiled = Tile(2, 3).apply(grid)
    assert tiled.shape == (2 * h, 3 * w)
    for r in range(2):
        for c in range(3):
            np.testing.assert_array_equal(tiled[r * h : (r + 1) * h, c * w : (c + 1) * w], grid)

    assert Rotate(90).apply(grid).shape == (w, h)
    assert Transpose().apply(grid).shape == (w, h)
    assert Reflect(0, mirror_first=True).apply(grid).shape == (2 * h, w)


@pytest.mark.parametrize(
    ("tool", "shape"),
    [(Scale(2, 2), (3, 4)), (Scale(1, 3), (2, 4)), (Tile(2, 1), (5, 2)), (Reflect(0, mirror_first=False), (3, 2)),
     (Chain([Rotate(90), Scale(2, 2)]), (4, 3))],
    ids=lambda value: value.name if isinstance(value, Tool) else str(value),
)
def test_inverse_rejects_shapes_apply_cannot_produce(tool: Tool, shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="shape"):
        tool.inverse(np.zeros(shape, dtype=np.int64))


def test_color_permutation_fixes_background_and_is_a_bijection() -> None:
    for seed in range(20):
        perm = ColorPermutation.random(np.random.default_rng(seed))
        assert perm.mapping[0] == 0
        assert sorted(perm.mapping) == list(range(10))
        colours = np.arange(10).reshape(2, 5)
        recoloured = perm.apply(colours)
        assert recoloured[0, 0] == 0
        assert len(np.unique(recoloured)) == 10
        assert recoloured.dtype == colours.dtype
    assert ColorPermutation.random(np.random.default_rng(7)) == ColorPermutation.random(np.random.default_rng(7))
    assert len({ColorPermutation.random(np.random.default_rng(seed)).mapping for seed in range(20)}) > 1


@pytest.mark.parametrize("mapping", [(1, 0, 2, 3, 4, 5, 6, 7, 8, 9), (0, 1, 1, 3, 4, 5, 6, 7, 8, 9), (0, 1, 2)])
def test_color_permutation_rejects_bad_mappings(mapping: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        ColorPermutation(mapping)


def test_chain_applies_in_order_and_inverts_in_reverse() -> None:
    grid = random_grid(np.random.default_rng(3), (3, 5))
    chain = Chain([Rotate(90), Scale(1, 2)])
    np.testing.assert_array_equal(chain.apply(grid), Scale(1, 2).apply(Rotate(90).apply(grid)))
    # Order matters here: the other order gives a different shape.
    assert chain.apply(grid).shape != Rotate(90).apply(Scale(1, 2).apply(grid)).shape
    np.testing.assert_array_equal(chain.inverse(chain.apply(grid)), grid)
    assert chain.name == "rotate_90+scale_1x2"
    with pytest.raises(ValueError):
        Chain([])


def test_tools_for_config_families_follow_seal() -> None:
    counts = {"basic": 11, "size": 3, "chain": 6, "repeat": 3}
    for i, family in enumerate(counts):
        flags = [j == i for j in range(4)]
        assert len(tools_for_config(*flags, rng=np.random.default_rng(0))) == counts[family], family
    assert tools_for_config(False, False, False, False, rng=np.random.default_rng(0)) == []

    everything = tools_for_config(True, True, True, True, rng=np.random.default_rng(0))
    assert len(everything) == sum(counts.values())
    assert len({tool.name for tool in everything}) == len(everything)
    again = tools_for_config(True, True, True, True, rng=np.random.default_rng(0))
    assert [tool.name for tool in again] == [tool.name for tool in everything]


def test_leave_one_out_without_tools() -> None:
    task = random_task(seed=0, n_demos=4)
    ttt = build_ttt_tasks(task, [], np.random.default_rng(0))
    assert len(ttt) == 4
    for held_out, ttt_task in enumerate(ttt):
        assert ttt_task.tool == "identity"
        np.testing.assert_array_equal(ttt_task.query_input, task.train[held_out][0])
        np.testing.assert_array_equal(ttt_task.query_output, task.train[held_out][1])
        expected = [pair for i, pair in enumerate(task.train) if i != held_out]
        assert len(ttt_task.demonstrations) == 3
        for (x, y), (ex, ey) in zip(ttt_task.demonstrations, expected):
            np.testing.assert_array_equal(x, ex)
            np.testing.assert_array_equal(y, ey)


def test_each_tool_transforms_every_grid_of_every_task() -> None:
    task = random_task(seed=1, n_demos=3)
    tools = tools_for_config(True, True, True, True, rng=np.random.default_rng(0))
    ttt = build_ttt_tasks(task, tools, np.random.default_rng(0))
    assert len(ttt) == 3 * (1 + len(tools))  # random 3x4 grids: nothing coincides, nothing is too big
    identity = [t for t in ttt if t.tool == "identity"]
    assert len(identity) == 3
    # Tool-major order: each tool's tasks are the images of the identity tasks, grid by grid.
    for tool in tools:
        images = [t for t in ttt if t.tool == tool.name]
        assert len(images) == 3
        for source, image in zip(identity, images):
            for g, h in zip(source.grids(), image.grids(), strict=True):
                np.testing.assert_array_equal(h, tool.apply(g))


def test_test_pairs_never_reach_ttt_data() -> None:
    demo = (np.ones((3, 3), dtype=np.int64), np.full((3, 3), 2, dtype=np.int64))
    secret = (np.full((3, 3), 7, dtype=np.int64), np.full((3, 3), 8, dtype=np.int64))
    task = ArcTask("leak", train=(demo, demo[::-1], demo), test=(secret,))
    tools = tools_for_config(True, True, True, True, rng=np.random.default_rng(0))
    for ttt_task in build_ttt_tasks(task, tools, np.random.default_rng(0)):
        assert not any(np.isin([7, 8], grid).any() for grid in ttt_task.grids())


def test_duplicates_are_dropped() -> None:
    blank = np.zeros((3, 3), dtype=np.int64)
    task = ArcTask("blank", train=((blank, blank),) * 4, test=((blank, blank),))
    ttt = build_ttt_tasks(task, [Rotate(90), Flip(0), Transpose()], np.random.default_rng(0))
    assert len(ttt) == 1  # every leave-one-out task, and every symmetric image of it, is the same
    assert ttt[0].tool == "identity"


def test_tools_that_grow_grids_past_30_are_skipped() -> None:
    small, large = random_task(seed=2, n_demos=3, shape=(15, 15)), random_task(seed=2, n_demos=3, shape=(16, 15))
    tools = [Scale(2, 2), Tile(1, 2), Rotate(90)]
    small_tools = {t.tool for t in build_ttt_tasks(small, tools, np.random.default_rng(0))}
    assert small_tools == {"identity", "scale_2x2", "tile_1x2", "rotate_90"}  # 30x30 still fits
    large_ttt = build_ttt_tasks(large, tools, np.random.default_rng(0))
    assert {t.tool for t in large_ttt} == {"identity", "tile_1x2", "rotate_90"}
    assert all(max(grid.shape) <= 30 for t in large_ttt for grid in t.grids())


def test_cap_is_a_deterministic_subset() -> None:
    task = random_task(seed=3, n_demos=4)
    tools = tools_for_config(True, True, False, False, rng=np.random.default_rng(0))
    full = build_ttt_tasks(task, tools, np.random.default_rng(0))
    capped = build_ttt_tasks(task, tools, np.random.default_rng(5), max_tasks=10)
    assert len(capped) == 10
    full_keys = [[g.tobytes() for g in t.grids()] for t in full]
    positions = [full_keys.index([g.tobytes() for g in t.grids()]) for t in capped]
    assert positions == sorted(positions)  # a subset, in the original order
    same = build_ttt_tasks(task, tools, np.random.default_rng(5), max_tasks=10)
    assert [t.tool for t in same] == [t.tool for t in capped]
    assert all(
        np.array_equal(a, b) for s, c in zip(same, capped) for a, b in zip(s.grids(), c.grids())
    )
    assert build_ttt_tasks(task, tools, np.random.default_rng(5), max_tasks=0) == []
    assert len(build_ttt_tasks(task, tools, np.random.default_rng(5), max_tasks=10_000)) == len(full)


def test_leave_two_out_and_permuted_copies() -> None:
    task = random_task(seed=4, n_demos=4)
    ttt = build_ttt_tasks(task, [], np.random.default_rng(0), leave_out=(1, 2))
    assert len(ttt) == 4 + 4 * 3
    assert sorted(len(t.demonstrations) for t in ttt) == [2] * 12 + [3] * 4

    with_copies = build_ttt_tasks(task, [Rotate(90)], np.random.default_rng(0), permuted_copies=True)
    assert len(with_copies) == 2 * 4 * 2
    copies = [t for t in with_copies if t.tool.endswith("+shuffled")]
    assert len(copies) == 8
    for copy in copies:
        assert copy.tool.startswith(("identity+permute_colors_", "rotate_90+permute_colors_"))
    again = build_ttt_tasks(task, [Rotate(90)], np.random.default_rng(0), permuted_copies=True)
    assert [t.tool for t in again] == [t.tool for t in with_copies]


def test_permuted_copy_keeps_background_and_the_task_consistent() -> None:
    rng = np.random.default_rng(5)
    pairs = tuple((random_grid(rng, (4, 4)), random_grid(rng, (4, 4))) for _ in range(3))
    task = ArcTask("perm", train=pairs, test=pairs[:1])
    ttt = build_ttt_tasks(task, [], np.random.default_rng(0), permuted_copies=True)
    originals = {t.query_input.tobytes(): t for t in ttt if t.tool == "identity"}
    for copy in (t for t in ttt if t.tool != "identity"):
        mapping = tuple(int(c) for c in copy.tool.split("_")[-1].split("+")[0])
        perm = ColorPermutation(mapping)
        source = originals[perm.inverse(copy.query_input).tobytes()]
        np.testing.assert_array_equal(perm.inverse(copy.query_output), source.query_output)
        assert np.array_equal(copy.query_input == 0, source.query_input == 0)
        demos = sorted(perm.inverse(x).tobytes() + perm.inverse(y).tobytes() for x, y in copy.demonstrations)
        assert demos == sorted(x.tobytes() + y.tobytes() for x, y in source.demonstrations)


def test_single_demonstration_gives_no_tasks_and_bad_arguments_raise() -> None:
    task = random_task(seed=6, n_demos=1)
    assert build_ttt_tasks(task, [Rotate(90)], np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        build_ttt_tasks(task, [], np.random.default_rng(0), leave_out=(0,))
    with pytest.raises(ValueError):
        build_ttt_tasks(task, [], np.random.default_rng(0), max_tasks=-1)
