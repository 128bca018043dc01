"""The claims ledger (issue 6): each LaMDA / PiSSA paper claim measured by the harness, one verdict each.

``verify_cli(out_dir, jobs)`` runs suites/claims.toml and the probes through the launcher and
writes ``out_dir/claims.md``; ``write_claims(results_dir)`` rewrites claims.md from records
already there. Verdict logic: ``verdicts.py`` (claims 1-4) and ``spectral_verdicts.py`` (5, 6),
on ``common.py`` (verdict words, thresholds, record helpers); probes (timed SVDs, outputs at
init): ``probes.py``; claim 1's closed-form search and ceiling: ``updates_search.py``.
"""

from .ledger import DEFAULT_OUT, ClaimsError, verify_cli, write_claims

__all__ = ["DEFAULT_OUT", "ClaimsError", "verify_cli", "write_claims"]
