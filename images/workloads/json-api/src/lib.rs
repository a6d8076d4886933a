//! A JSON API that does real work per request: `POST` an order, get back
//! its invoice. The body is parsed, priced (line totals, a coupon, the
//! customer's country's VAT), sorted and serialised again. Built for
//! wasm32-wasip2 it is a wasi:http handler (component.rs); json-api-native
//! serves the same `invoice` with hyper, for the bench's runc side.

#[cfg(target_os = "wasi")]
mod component;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Order {
    id: String,
    customer: Customer,
    currency: String,
    items: Vec<Item>,
    #[serde(default)]
    coupon: Option<String>,
}

#[derive(Deserialize)]
struct Customer {
    name: String,
    country: String,
}

#[derive(Deserialize)]
struct Item {
    sku: String,
    name: String,
    unit_price_cents: u64,
    quantity: u32,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Serialize)]
struct Invoice {
    order_id: String,
    customer: String,
    currency: String,
    lines: Vec<Line>,
    item_count: u64,
    subtotal_cents: u64,
    discount_cents: u64,
    vat_percent: u64,
    vat_cents: u64,
    total_cents: u64,
    tags: BTreeSet<String>,
}

#[derive(Serialize)]
struct Line {
    sku: String,
    name: String,
    quantity: u32,
    unit_price_cents: u64,
    total_cents: u64,
}

/// What a request asks for that is not an invoice.
const USAGE: &str = "POST an order as JSON to get its invoice\n";

/// The answer to a request, (status, content type, body), for the wasm
/// handler and its native twin alike: a POST's body (or why it could not be
/// read) gets the invoice or a 400; any other method (None) the usage.
pub fn answer<B: AsRef<[u8]>>(post_body: Option<Result<B, String>>) -> (u16, &'static str, Vec<u8>) {
    match post_body.map(|body| body.and_then(|body| invoice(body.as_ref()))) {
        Some(Ok(invoice)) => (200, "application/json", invoice),
        Some(Err(message)) => (400, "text/plain", message.into_bytes()),
        None => (405, "text/plain", USAGE.as_bytes().to_vec()),
    }
}

/// The invoice for an order, as JSON; a bad order is a message for a 400.
pub fn invoice(body: &[u8]) -> Result<Vec<u8>, String> {
    let order: Order = serde_json::from_slice(body).map_err(|e| format!("not an order: {e}\n"))?;
    let mut lines: Vec<Line> = order
        .items
        .iter()
        .map(|item| Line {
            sku: item.sku.clone(),
            name: item.name.clone(),
            quantity: item.quantity,
            unit_price_cents: item.unit_price_cents,
            total_cents: item.unit_price_cents * u64::from(item.quantity),
        })
        .collect();
    // Largest line first; the SKU breaks ties so the output is stable.
    lines.sort_by(|a, b| b.total_cents.cmp(&a.total_cents).then_with(|| a.sku.cmp(&b.sku)));
    let subtotal_cents: u64 = lines.iter().map(|line| line.total_cents).sum();
    let discount_cents = match order.coupon.as_deref() {
        Some("SAVE10") => subtotal_cents / 10,
        Some(other) => return Err(format!("unknown coupon {other}\n")),
        None => 0,
    };
    let vat_percent = vat_percent(&order.customer.country);
    let vat_cents = (subtotal_cents - discount_cents) * vat_percent / 100;
    let invoice = Invoice {
        order_id: order.id,
        customer: order.customer.name,
        currency: order.currency.to_uppercase(),
        item_count: order.items.iter().map(|item| u64::from(item.quantity)).sum(),
        tags: order.items.into_iter().flat_map(|item| item.tags).collect(),
        lines,
        subtotal_cents,
        discount_cents,
        vat_percent,
        vat_cents,
        total_cents: subtotal_cents - discount_cents + vat_cents,
    };
    serde_json::to_vec(&invoice).map_err(|e| format!("cannot write the invoice: {e}\n"))
}

fn vat_percent(country: &str) -> u64 {
    match country {
        "DE" => 19,
        "FR" | "GB" => 20,
        "NL" | "ES" => 21,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_prices_sorts_and_taxes() {
        let order = br#"{"id":"o1","customer":{"name":"Ada","country":"DE"},"currency":"eur","coupon":"SAVE10",
            "items":[{"sku":"a","name":"A","unit_price_cents":100,"quantity":1,"tags":["x"]},
                     {"sku":"b","name":"B","unit_price_cents":250,"quantity":2,"tags":["y","x"]}]}"#;
        let invoice: serde_json::Value = serde_json::from_slice(&invoice(order).unwrap()).unwrap();
        assert_eq!(invoice["lines"][0]["sku"], "b");
        assert_eq!(invoice["subtotal_cents"], 600);
        assert_eq!(invoice["discount_cents"], 60);
        assert_eq!(invoice["vat_cents"], 102);
        assert_eq!(invoice["total_cents"], 642);
        assert_eq!(invoice["tags"], serde_json::json!(["x", "y"]));
    }

    #[test]
    fn bad_orders_are_explained() {
        assert!(invoice(b"{}").unwrap_err().starts_with("not an order: missing field `id`"));
    }
}
