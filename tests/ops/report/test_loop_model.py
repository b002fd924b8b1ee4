"""The report's loop model on a hand-written SASS listing (no compiler): which branches are loops, how often
each loop's body is charged, and that a cost model which no longer matches the kernel's loops is an error."""
import pytest

from retailsim.ops.report.compile import hot_loop, instructions_per_program, loop_nest, loops

# A peeled loop (0x10-0x30), then an outer loop (0x40-0xb0) holding an inner one (0x50-0x80), EXIT and the
# branch-to-itself ptxas ends every kernel with.
SASS = [
    (0x00, "MOV", "R1, c[0x0][0x28]"),
    (0x10, "FADD", "R2, R2, R3"), (0x20, "FADD", "R2, R2, R3"), (0x30, "BRA", "0x10"),
    (0x40, "IADD3", "R4, R4, 0x1, RZ"),
    (0x50, "FMUL", "R5, R5, R6"), (0x60, "FMUL", "R5, R5, R6"), (0x70, "FFMA", "R5, R5, R6, R7"),
    (0x80, "BRA", "0x50"),
    (0x90, "IADD3", "R4, R4, 0x1, RZ"), (0xa0, "ISETP.GE.AND", "P0, PT, R4, R8, PT"), (0xb0, "BRA", "0x40"),
    (0xc0, "EXIT", ""), (0xd0, "BRA", "0xd0"),
]


def test_a_branch_to_itself_is_not_a_loop():
    assert sorted(loops(SASS)) == [(0x10, 0x30), (0x40, 0xb0), (0x50, 0x80)]
    assert [(l["depth"], l["own_instructions"]) for l in loop_nest(SASS)] == [(1, 3), (1, 4), (2, 4)]


def test_trip_counts_charge_each_loop_by_its_depth_and_counts_charge_each_loop_its_own():
    straight = len(SASS) - 3 - 4 - 4
    assert instructions_per_program(SASS, [5, 3]) == straight + 3 * 5 + 4 * 5 + 4 * 15
    # The peeled loop runs twice, the outer loop 5 times and the inner one 15 times in all.
    assert instructions_per_program(SASS, [5, 3], ((1, 2), (1, 5), (2, 15))) == straight + 3 * 2 + 4 * 5 + 4 * 15
    assert instructions_per_program(SASS, [5, 3], ((1, 0), (1, 5), (2, 15))) == straight + 4 * 5 + 4 * 15


def test_a_cost_model_that_does_not_describe_the_loops_is_an_error():
    with pytest.raises(ValueError, match=r"depths \[1, 2\], the SASS has them at \[1, 1, 2\]"):
        instructions_per_program(SASS, [5, 3], ((1, 5), (2, 15)))
    with pytest.raises(ValueError, match=r"depths \[1, 2, 1\]"):   # the peeled loop moved after the nest
        instructions_per_program(SASS, [5, 3], ((1, 5), (2, 15), (1, 2)))
    with pytest.raises(ValueError, match="depth 2, the cost model declares 1"):
        instructions_per_program(SASS, [5])


def test_the_hot_loop_is_the_one_that_executes_the_most_once_counts_are_known():
    assert hot_loop(SASS)["span"] == [0x50, 0x80]           # innermost with the most instructions
    assert hot_loop(SASS, ((1, 100), (1, 5), (2, 15)))["span"] == [0x10, 0x30]
    assert hot_loop(SASS, ((1, 0), (1, 5), (2, 15)))["span"] == [0x50, 0x80]
