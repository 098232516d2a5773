"""Diagnostics run as programs (`python -m sparsetune.diagnose.<name>`): measurements that explain a
figure (where time goes, what a routing mode costs) rather than compare variants side by side, which
is `sparsetune bench`'s job."""
