"""The autoscaler daemon: reconcile loop, replica feed publisher, command line."""
