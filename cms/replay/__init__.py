"""``cms replay``: run the real policy and planner on a simulated clock over load that really
happened (a recorded window of the state database, or a trace), for one or more policy
settings, and show side by side what each would have done.

  inputs.py   the offered load (a CSV trace, a cms-loadgen record) and a recorded window
  fit.py      the model's figures fitted from the records (service time, boot and unpark times)
  model.py    the model: a fluid queue shared by the ready replicas, their CPU and latency
  sim.py      the simulated clock: cms.autoscaler.planner and cms.policy, tick by tick
  report.py   the JSON document and the plot
  command.py  the command line (``cms replay``)
"""
