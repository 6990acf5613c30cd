"""``facesearch serve``: a REST API and web pages over one gallery, the model and index loaded once.

``service`` holds the gallery and model and makes the library calls (no second implementation of who or
enroll); ``app`` builds the FastAPI application (authentication, one error shape); ``guard`` is what every
request passes first (security headers, streamed body limits, subject names as one path segment, CSRF checks);
``api`` is /api/v1, ``pages`` the server-rendered pages (``templates/``, ``static/``). Needs the ``serve`` extra
(FastAPI, uvicorn, python-multipart, Jinja2).
"""
