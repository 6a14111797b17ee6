"""The demo, apart from the daemon and the API it drives.

- cms.demo.run: ``cms-demo``, the local autoscaling demo start to finish
- cms.demo.report: its figure and summary, rebuildable from a finished run
  (``python -m cms.demo.report out/``)
"""
