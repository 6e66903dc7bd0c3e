"""The shared evaluation harness: every student, whatever its method, is scored here."""
from retrikt.eval.harness import evaluate
from retrikt.eval.results import load_results, markdown_table, save_result, summarise

__all__ = ["evaluate", "save_result", "load_results", "summarise", "markdown_table"]
