"""Tasks by name. Each module exports DESCRIPTION, Config and make(config) -> base.Task."""
from tasks import clusters, teacher_student
from tasks import cifar10, digits
from tasks import adding, copy_memory
from tasks import assoc_recall, markov_lm

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
