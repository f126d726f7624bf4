from flask import jsonify


def api_error(status: int, code: str, message: str, **extra):
    """A JSON error response in the API's shape."""
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response
