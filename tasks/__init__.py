"""Tasks by name. Each module exports DESCRIPTION, Config and make(config) -> base.Task."""
from tasks import clusters, teacher_student

TASKS = {
    "teacher_student": teacher_student,
    "clusters": clusters,
}
