"""serving.decoding.rows: physical rows keep their slots, so a layout change rewrites only what changed."""

from __future__ import annotations

import numpy as np

from serving.decoding.rows import EncoderRows, dense_slots


def test_dense_slots_keep_each_preferred_slot_below_the_size_and_fill_the_rest_in_order():
    # slots 3, 0, 1 are kept; row 1 (no preference) and row 3 (slot 7 is past the end) take 2 and 4
    assert dense_slots(np.array([3, -1, 0, 7, 1]), 5).tolist() == [3, 2, 0, 4, 1]
    assert dense_slots(np.arange(4), 4).tolist() == [0, 1, 2, 3]


def _encoded(*lengths: int) -> dict[str, np.ndarray]:
    """Sentence i's memory holds 10 * (i + 1) + position on its first ``lengths[i]`` positions."""
    width = max(lengths)
    memory = np.zeros((len(lengths), width, 1), dtype=np.float32)  # [n, S, 1]
    for i, n in enumerate(lengths):
        memory[i, :n, 0] = 10 * (i + 1) + np.arange(n)
    return {"memory": memory}


def test_encoder_rows_expand_each_sentence_to_its_rows_and_rewrite_only_rows_whose_sentence_changed():
    rows = EncoderRows({"memory": 1})
    a, b = rows.add(_encoded(2, 3), longest=3)
    first = rows.for_rows(np.array([a, a, b]), np.array([7, 7, 8]))["memory"][:, :, 0]
    assert first.tolist() == [[10, 11, 0], [10, 11, 0], [20, 21, 22]]
    rows.rows["memory"][0] = -1.0  # a marker: a row whose sentence did not change is not rewritten
    again = rows.for_rows(np.array([a, a, b]), np.array([7, 7, 8]))["memory"][:, :, 0]
    assert again[0].tolist() == [-1, -1, -1] and again[1:].tolist() == first[1:].tolist()
    swapped = rows.for_rows(np.array([b, a, b]), np.array([8, 7, 8]))["memory"][:, :, 0]
    assert swapped.tolist() == [[20, 21, 22], [10, 11, 0], [20, 21, 22]]


def test_encoder_rows_widen_for_a_longer_source_and_narrow_only_once_well_past_it():
    rows = EncoderRows({"memory": 1})
    (a,) = rows.add(_encoded(2), longest=2)
    rows.for_rows(np.array([a]), np.array([0]))
    (b,) = rows.add(_encoded(12), longest=12)
    assert rows.width == 12
    wide = rows.for_rows(np.array([a, b]), np.array([0, 1]))["memory"][:, :, 0]
    assert wide[0].tolist() == [10, 11] + [0] * 10  # the earlier row padded, not rewritten
    rows.release(np.array([b]))
    rows.fit(5)  # 12 - 5 < EncoderRows.SHRINK_SLACK: keep the width, no copy
    assert rows.width == 12
    rows.fit(2)
    assert rows.width == 2
    assert rows.for_rows(np.array([a]), np.array([0]))["memory"][:, :, 0].tolist() == [[10, 11]]


def test_encoder_rows_count_each_replacement_of_their_row_arrays():
    rows = EncoderRows({"memory": 1})
    (a,) = rows.add(_encoded(2), longest=2)
    before = rows.version
    rows.for_rows(np.array([a]), np.array([0]))  # the row arrays are made
    made = rows.version
    assert made > before
    same = rows.for_rows(np.array([a]), np.array([0]))["memory"]
    assert rows.version == made  # nothing replaced: the same arrays at the same addresses
    (b,) = rows.add(_encoded(12), longest=12)  # wider: every array re-padded
    assert rows.version > made
    wider = rows.version
    grown = rows.for_rows(np.array([a, b] * 8), np.arange(16) % 2)["memory"]
    assert rows.version > wider and grown.shape[0] == 16 and same.shape[0] == 1
