// The dashboard's only data source: the public REST API under /api/v1 (the browser sends
// the basic-auth credentials it was given for /dashboard, same origin).

export class ApiError extends Error {}

export async function call(path, body) {
  const init = body === undefined
    ? { method: "GET", credentials: "same-origin" }
    : { method: "POST", credentials: "same-origin", body: JSON.stringify(body),
        headers: { "content-type": "application/json" } };
  const response = await fetch(`/api/v1/${path}`, init);
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    throw new ApiError((data && data.error) || `${path}: HTTP ${response.status}`);
  }
  return data;
}

// "2023-05-02T00:00:00.000000" (local time of the request's zone) -> seconds, read as UTC so
// that charts drawn in UTC show exactly the labels the API gave.
export function labelSeconds(label) {
  return Date.parse(label.slice(0, 19) + "Z") / 1000;
}

export function sum(list, pick) {
  return list.reduce((total, item) => total + pick(item), 0);
}
