"""The tasks lambda contract: a class with ``splitTasksContent`` and ``executeSubtask``."""


class BaseLambdaTask:
    """Base class of a tasks lambda (subclassing it is optional: any class with both
    methods is found). Both methods may be sync or ``async``."""

    async def splitTasksContent(self, content):
        """Splits a task's content into subtask contents (a list of dicts)."""
        raise NotImplementedError

    async def executeSubtask(self, subTaskContent):
        """Executes one subtask; returns a dict or list."""
        raise NotImplementedError
