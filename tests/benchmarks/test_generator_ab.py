import pytest

from benchmarks.generator_ab import GeneratorAB, _extra_args, main


def test_the_regenerate_line_carries_every_option_that_is_not_the_default():
    assert _extra_args(GeneratorAB()) == ""
    cfg = GeneratorAB(max_new_tokens=160, variants=["tuned 5 epochs + demos"], name="ab_cb")
    assert _extra_args(cfg) == " --max-new-tokens 160 --variants 'tuned 5 epochs + demos' --name ab_cb"


def test_an_unknown_variant_is_refused_before_anything_is_built():
    with pytest.raises(SystemExit, match="unknown \\['nosuch'\\]"):
        main(["--variants", "nosuch"])
