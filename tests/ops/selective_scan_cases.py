"""Test cases shared by the selective_scan test files (the Function's paths and the C++ kernel's own tests)."""

# id -> (has D, has z, has delta_bias, delta_softplus): every optional argument off, each alone, all on.
OPTIONS = {
    "plain": (False, False, False, False),
    "D": (True, False, False, False),
    "z": (False, True, False, False),
    "bias": (False, False, True, False),
    "softplus": (False, False, False, True),
    "all": (True, True, True, True),
}
