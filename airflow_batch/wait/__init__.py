"""The wait stage: the decision policy, the progress it shows, its event, and its one loop."""
