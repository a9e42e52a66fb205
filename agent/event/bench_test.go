package event

import (
	"encoding/json"
	"testing"
)

// Realistic track bodies of about 300 bytes: one complete (316 B), one with
// timestamp and apiKey left out for trackd to fill in (315 B).
const (
	benchComplete = `{"apiKey":"pk_live_5f3a9c2e7b1d4e6f8a0b2c4d","event":"CLICKED_CHECKOUT",` +
		`"userId":"user_8f14e45fceea167a","anonymousId":"b3c1f2e4-9a7d-4c2b-8e6f-1a2b3c4d5e6f",` +
		`"properties":{"price":100.5,"currency":"USD","category":"Apparel",` +
		`"quantity":2,"coupon":null,"tags":["sale","summer"]},` +
		`"timestamp":"2021-12-02T00:30:08.276Z"}`
	benchStamp = `{"event":"CLICKED_CHECKOUT",` +
		`"userId":"user_8f14e45fceea167a","anonymousId":"b3c1f2e4-9a7d-4c2b-8e6f-1a2b3c4d5e6f",` +
		`"properties":{"price":100.5,"currency":"USD","category":"Apparel","sku":"SKU-10442",` +
		`"quantity":2,"coupon":null,"tags":["sale","summer"],"page":"/checkout?step=2",` +
		`"referrer":"https://example.com/cart"}}`
)

func BenchmarkPrepare(b *testing.B) {
	d := Defaults{Now: testNow, APIKey: "pk_live_5f3a9c2e7b1d4e6f8a0b2c4d"}
	for _, bc := range []struct{ name, body string }{
		{"complete", benchComplete},
		{"stamp", benchStamp},
		{"replace", `{"timestamp":null,"apiKey":"",` + benchStamp[1:]},
	} {
		body := []byte(bc.body)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			buf := make([]byte, 0, 1024)
			for b.Loop() {
				var err error
				buf, err = Prepare(buf[:0], Track, body, d)
				if err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"-nil-dst", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := Prepare(nil, Track, body, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBaselineUnmarshalMap is what decoding the same body into a map
// costs, for comparison: it does not even validate or stamp.
func BenchmarkBaselineUnmarshalMap(b *testing.B) {
	for _, bc := range []struct{ name, body string }{
		{"complete", benchComplete},
		{"stamp", benchStamp},
	} {
		body := []byte(bc.body)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				var m map[string]any
				if err := json.Unmarshal(body, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
