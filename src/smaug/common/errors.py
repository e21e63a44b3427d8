import re
import reprlib


class UserError(Exception):
    """Bad input the user can fix; the message names the file/field/row and says what to do.

    The CLI prints it without a traceback and exits 2."""


def validation_error(err, where: str, hint: str = "") -> UserError:
    """A pydantic ``ValidationError`` as one line naming ``where`` and each field with its problem."""
    problems = []
    for error in err.errors():
        field = ".".join(str(part) for part in error["loc"])
        message = re.sub(r" or instance of \w+|^Value error, ", "", error["msg"])
        message = message[0].lower() + message[1:]
        problems.append(f"field `{field}`: {message} (got {reprlib.repr(error['input'])})" if field else message)
    return UserError(f"{where}: {'; '.join(problems)}{hint}")
