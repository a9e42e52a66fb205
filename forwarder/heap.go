package forwarder

// idHeap orders items oldest (lowest ID) first.
type idHeap []*item

func (h idHeap) Len() int           { return len(h) }
func (h idHeap) Less(i, j int) bool { return h[i].rec.ID < h[j].rec.ID }
func (h idHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *idHeap) Push(x any)        { *h = append(*h, x.(*item)) }
func (h *idHeap) Pop() any          { return pop((*[]*item)(h)) }

// timeHeap orders items by when they may be sent again, then oldest first.
type timeHeap []*item

func (h timeHeap) Len() int { return len(h) }
func (h timeHeap) Less(i, j int) bool {
	if !h[i].nextAt.Equal(h[j].nextAt) {
		return h[i].nextAt.Before(h[j].nextAt)
	}
	return h[i].rec.ID < h[j].rec.ID
}
func (h timeHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *timeHeap) Push(x any)   { *h = append(*h, x.(*item)) }
func (h *timeHeap) Pop() any     { return pop((*[]*item)(h)) }

func pop(h *[]*item) *item {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}
