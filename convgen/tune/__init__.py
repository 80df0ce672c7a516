"""The autotuner (`convgen tune`): tuner.py searches a layer's schedules,
search.py proposes candidates, measure.py builds, checks and times them in
worker processes, records.py keeps every measurement, report.py prints and
plots them. The driver reads the winners (records.tuned_schedule)."""
