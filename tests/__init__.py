"""robprune's test suite. A regular package (not a namespace one) so that ``tests.helpers`` is ours even where
another distribution installs a top-level ``tests`` package into site-packages (robustbench 1.1.1 does)."""
