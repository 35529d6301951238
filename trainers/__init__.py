"""Trainers of agentgym, one file per trainer; registered through the ``agentgym.trainers`` entry-point group."""
