"""Tasks by name. Each module exports DESCRIPTION, Config, make(config) -> base.Task and data_bytes(config) (the
bytes making its data takes, known before anything is allocated)."""
from gradbench.tasks import clusters, teacher_student
from gradbench.tasks import cifar10, digits
from gradbench.tasks import adding, copy_memory
from gradbench.tasks import assoc_recall, markov_lm

TASKS = {
    "teacher_student": teacher_student,
    "clusters": clusters,
    "digits": digits,
    "cifar10": cifar10,
    "adding": adding,
    "copy_memory": copy_memory,
    "markov_lm": markov_lm,
    "assoc_recall": assoc_recall,
}
