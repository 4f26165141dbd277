//! Stage 3 of 8 (routing): method + path -> `Route`, or 404 / 405 with `Allow`.
//!
//! In: a parsed request's method and path, and which listener it came on.
//! Out: the `Route` to serve, or why not.
//! Invariants: a known path with a wrong method is 405 and names the methods
//! it allows; anything else is 404. Paths match exactly (no trailing `/`).
//! Never: looks at headers, bodies or state.

use crate::http::parse::Method;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'p> {
    /// `PUT|POST /shop/cart/add`: one seckill attempt.
    CartAdd,
    /// `GET /shop/result`.
    Result,
    /// `GET /event/list`.
    EventList,
    /// `GET /event/info`.
    EventInfo,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics,
    /// `POST /admin/events`.
    AdminPut,
    /// `GET /admin/events/E`.
    AdminGet(&'p str),
    /// `DELETE /admin/events/E`.
    AdminDelete(&'p str),
    /// `POST /admin/events/E/goods/G/stock`: a top-up.
    AdminTopUp(&'p str, &'p str),
}

/// Why no route serves the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// 4004.
    NotFound,
    /// 4005, with the `Allow` header's value.
    MethodNotAllowed(&'static str),
}

/// Routes of the public listener.
pub(crate) fn public(method: Method, path: &str) -> Result<Route<'static>, RouteError> {
    use Method::*;
    let (route, allow) = match path {
        "/shop/cart/add" => (Route::CartAdd, "PUT, POST"),
        "/shop/result" => (Route::Result, "GET"),
        "/event/list" => (Route::EventList, "GET"),
        "/event/info" => (Route::EventInfo, "GET"),
        "/healthz" => (Route::Healthz, "GET"),
        "/readyz" => (Route::Readyz, "GET"),
        "/metrics" => (Route::Metrics, "GET"),
        _ => return Err(RouteError::NotFound),
    };
    let allowed = match route {
        Route::CartAdd => matches!(method, Put | Post),
        _ => method == Get,
    };
    if allowed {
        Ok(route)
    } else {
        Err(RouteError::MethodNotAllowed(allow))
    }
}

/// Routes of the admin listener.
pub(crate) fn admin(method: Method, path: &str) -> Result<Route<'_>, RouteError> {
    if path == "/admin/events" {
        return match method {
            Method::Post => Ok(Route::AdminPut),
            _ => Err(RouteError::MethodNotAllowed("POST")),
        };
    }
    let Some(rest) = path.strip_prefix("/admin/events/") else {
        return Err(RouteError::NotFound);
    };
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    match parts[..] {
        [id] if !id.is_empty() => match method {
            Method::Get => Ok(Route::AdminGet(id)),
            Method::Delete => Ok(Route::AdminDelete(id)),
            _ => Err(RouteError::MethodNotAllowed("GET, DELETE")),
        },
        [id, "goods", goods, "stock"] if !id.is_empty() && !goods.is_empty() => match method {
            Method::Post => Ok(Route::AdminTopUp(id, goods)),
            _ => Err(RouteError::MethodNotAllowed("POST")),
        },
        _ => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Method::*;

    #[test]
    fn public_table() {
        let cases = [
            (Put, "/shop/cart/add", Ok(Route::CartAdd)),
            (Post, "/shop/cart/add", Ok(Route::CartAdd)),
            (
                Get,
                "/shop/cart/add",
                Err(RouteError::MethodNotAllowed("PUT, POST")),
            ),
            (Get, "/shop/result", Ok(Route::Result)),
            (Get, "/event/list", Ok(Route::EventList)),
            (Get, "/event/info", Ok(Route::EventInfo)),
            (Get, "/healthz", Ok(Route::Healthz)),
            (Get, "/readyz", Ok(Route::Readyz)),
            (Get, "/metrics", Ok(Route::Metrics)),
            (Post, "/healthz", Err(RouteError::MethodNotAllowed("GET"))),
            (
                Other,
                "/event/list",
                Err(RouteError::MethodNotAllowed("GET")),
            ),
            (Get, "/healthz/", Err(RouteError::NotFound)),
            (Get, "/", Err(RouteError::NotFound)),
            (Get, "/admin/events", Err(RouteError::NotFound)),
        ];
        for (m, p, want) in cases {
            assert_eq!(public(m, p), want, "{m:?} {p}");
        }
    }

    #[test]
    fn admin_table() {
        let cases = [
            (Post, "/admin/events", Ok(Route::AdminPut)),
            (
                Get,
                "/admin/events",
                Err(RouteError::MethodNotAllowed("POST")),
            ),
            (Get, "/admin/events/e1", Ok(Route::AdminGet("e1"))),
            (Delete, "/admin/events/e1", Ok(Route::AdminDelete("e1"))),
            (
                Put,
                "/admin/events/e1",
                Err(RouteError::MethodNotAllowed("GET, DELETE")),
            ),
            (Get, "/admin/events/", Err(RouteError::NotFound)),
            (Get, "/admin/events/a/b", Err(RouteError::NotFound)),
            (
                Post,
                "/admin/events/e1/goods/g1/stock",
                Ok(Route::AdminTopUp("e1", "g1")),
            ),
            (
                Get,
                "/admin/events/e1/goods/g1/stock",
                Err(RouteError::MethodNotAllowed("POST")),
            ),
            (
                Post,
                "/admin/events/e1/goods//stock",
                Err(RouteError::NotFound),
            ),
            (
                Post,
                "/admin/events/e1/goods/g1/stock/",
                Err(RouteError::NotFound),
            ),
            (Post, "/admin/events/e1/goods/g1", Err(RouteError::NotFound)),
            (Get, "/healthz", Err(RouteError::NotFound)),
        ];
        for (m, p, want) in cases {
            assert_eq!(admin(m, p), want, "{m:?} {p}");
        }
    }
}
