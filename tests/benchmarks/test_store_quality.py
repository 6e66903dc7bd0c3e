from benchmarks.store_quality import final_kl, rl_label


def test_rl_label_names_only_the_ppo_settings_that_differ_from_the_defaults():
    assert rl_label({}) == "none"
    assert rl_label({"rl": "ppo", "rl_kl_coef": 0.05, "rl_lr": 1e-3}) == "ppo"
    assert rl_label({"rl": "ppo", "rl_kl_coef": 0.2}) == "ppo (kl-coef 0.2)"
    assert rl_label({"rl": "ppo", "rl_lr": 1e-4}) == "ppo (lr 0.0001)"


def test_final_kl_is_the_last_logged_step(tmp_path):
    assert final_kl(str(tmp_path)) is None
    (tmp_path / "rl_log.jsonl").write_text('{"kl": 0.0}\n{"kl": 2.5}\n')
    assert final_kl(str(tmp_path)) == 2.5
