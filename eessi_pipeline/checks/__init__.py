"""ReFrame checks of the software layer: references, configuration, running, judging."""
