"""`make reproduce`: the declared experiments (plan), running them (runner) and the report (report)."""
