import logging

from decentcom.errors import DB_RETRY_AFTER_S, is_database_down, json_error

logger = logging.getLogger("decentcom.errors")


class ApiErrorMiddleware:
    """Under /api/ every answer is JSON, even Django's own 404 and any crash."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (request.path.startswith("/api/") and response.status_code == 404
                and not response.get("Content-Type", "").startswith("application/json")):
            return json_error(404, "not_found", "no such endpoint")
        return response

    def process_exception(self, request, exception):
        if not request.path.startswith("/api/"):
            return None
        if is_database_down(exception):
            logger.error("database unavailable: %s", type(exception).__name__)
            return json_error(503, "service_unavailable", "the database is unavailable, try again",
                              **{"Retry-After": str(DB_RETRY_AFTER_S)})
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "server_error", "internal server error")
